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


def test_stream_start_up_imports_no_file_pipeline() -> None:
    """`segscope stream` at launch: the command line and the stream loop import neither the file pipeline nor the
    file readers and writers (time before the first output), and the package's names still resolve on use."""
    import subprocess
    import sys

    code = (
        "import sys, segscope.cli, segscope.stream; "
        "print(sorted(m for m in ('segscope.pipeline', 'segscope.sources.files', 'segscope.sinks.files') "
        "if m in sys.modules)); "
        "from segscope import Model, fit_file; from segscope.sources import read_file; "
        "from segscope.sinks import ListSink; "
        "print(Model.__module__, fit_file.__module__, read_file.__module__, ListSink.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1] == "segscope.model segscope.pipeline segscope.sources.files segscope.sinks.memory"
    assert "Model" in dir(segscope)
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Modle'"):
        segscope.Modle  # noqa: B018  (a misspelled name is an AttributeError, as before)


def test_missing_dependency_names_the_extra() -> None:
    import pytest

    from segscope._deps import require

    with pytest.raises(segscope.MissingDependencyError, match=r"pip install 'segscope\[kafka\]'"):
        require("surely_not_installed_module", extra="kafka", feature="Kafka streaming")
