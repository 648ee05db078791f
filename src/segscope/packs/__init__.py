"""The use-case packs (fraud, cyber, maintenance): configs shipped with the package, also as configs/<name>.yaml
in the repository. ``segscope fit DATA --config fraud`` loads one by name."""
