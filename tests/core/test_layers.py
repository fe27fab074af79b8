import subprocess
import sys


def test_core_imports_no_dask_zarr_or_pipeline():
    code = (
        "import sys, diffops_core; "
        "print(sorted(m for m in ('dask', 'zarr', 'distributed', 'pipeline') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
