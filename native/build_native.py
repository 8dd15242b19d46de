"""cffi (API mode) build script for ploopfs._native.

Used by setup.py through ``cffi_modules=["native/build_native.py:ffibuilder"]``; can also be
run directly (``python native/build_native.py``) to compile the module in place for debugging.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = HERE / "ploopfs_native.h"
SOURCE = HERE / "ploopfs_native.c"


def _cdef_text() -> str:
    """Declarations between the CDEF markers of the header (cdef() has no preprocessor)."""
    text = HEADER.read_text()
    begin = text.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
    end = text.index("/* CDEF-END */")
    return text[begin:end]


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "ploopfs._native",
    '#include "ploopfs_native.h"\n',
    # Relative to the project root, where setuptools runs the build.  An absolute path would
    # be baked into the generated C file and break sdists built elsewhere.
    sources=[str(SOURCE.relative_to(HERE.parent))],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
)

if __name__ == "__main__":
    import os

    os.chdir(HERE.parent)
    ffibuilder.compile(tmpdir=str(HERE / "build"), verbose=True)
