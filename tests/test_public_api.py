import segscope


def test_public_surface_is_pinned() -> None:
    assert segscope.__all__ == [
        "SCORED_COLUMNS",
        "BundleError",
        "ConfigError",
        "DataError",
        "MissingDependencyError",
        "Model",
        "NotFittedError",
        "SchemaError",
        "SegscopeConfig",
        "SegscopeError",
        "SegscopeWarning",
        "SinkError",
        "SourceError",
        "__version__",
        "evaluate_file",
        "fit_file",
        "load_config",
        "score_file",
    ]
    for name in segscope.__all__:
        assert hasattr(segscope, name)


def test_cli_import_is_light() -> None:
    import subprocess
    import sys

    code = "import sys, segscope.cli; print(any(m in sys.modules for m in ('torch', 'umap', 'kafka', 'xgboost')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_missing_dependency_names_the_extra() -> None:
    import pytest

    from segscope._deps import require

    with pytest.raises(segscope.MissingDependencyError, match=r"pip install 'segscope\[kafka\]'"):
        require("surely_not_installed_module", extra="kafka", feature="Kafka streaming")
