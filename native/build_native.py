"""cffi (API mode) build script for ploopfs._native.

Used by setup.py through ``cffi_modules=["native/build_native.py:ffibuilder"]``; can also be
run directly (``python native/build_native.py``) to compile the module in place for debugging.
"""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# The parts of the module, listed here and in the Makefile (TEST_SRC). Each header's
# declarations between its CDEF markers go to cdef(); pf_rdiff.h only gathers the rdiff
# engine's five headers for the C tests, so it is not listed.
HEADER_NAMES = [
    "ploopfs_native.h",
    "pf_b2x.h",  # multi-buffer BLAKE2b
    "pf_b3.h",  # BLAKE3 as a tree, the diff window
    "pf_dedup.h",  # du --dedup block tables
    "pf_map.h",  # block maps
    # the rdiff engine, split by concern as librsync is (pf_rdiff.h says which file does what)
    "pf_rollsum.h", "pf_sig.h", "pf_search.h", "pf_emit.h", "pf_patch.h",
]
SOURCE_NAMES = [
    "ploopfs_native.c",
    "pf_b2x.c",
    "pf_b3.c", "pf_b3_base.c",
    # BLAKE3's x86-64 assembly back ends (empty files elsewhere)
    "pf_b3_sse2.S", "pf_b3_sse41.S", "pf_b3_avx2.S", "pf_b3_avx512.S",
    "pf_dedup.c", "pf_dedup_x86.c", "pf_dedup_x86_512.c",
    "pf_map.c",
    "pf_rollsum.c", "pf_sig.c", "pf_search.c", "pf_emit.c", "pf_patch.c",
]
HEADERS = [HERE / name for name in HEADER_NAMES]
SOURCES = [HERE / name for name in SOURCE_NAMES]


def _blake3_dir() -> str:
    """The official BLAKE3 C sources, as Debian ships them inside librust-blake3-dev (the Rust
    crate builds them too); the newest version present. tools/setup installs the package."""
    found = sorted(Path("/usr/share/cargo/registry").glob("blake3-*/c/blake3.c"),
                   key=lambda p: [int(x) if x.isdigit() else 0
                                  for x in p.parent.parent.name[7:].split(".")])
    if not found:
        raise SystemExit("native build: the BLAKE3 C sources are missing; install the Debian "
                         "package librust-blake3-dev (tools/setup does)")
    return str(found[-1].parent)


def _allow_assembly() -> None:
    """distutils compiles only the suffixes it knows; .S (assembly through the C preprocessor:
    BLAKE3's SIMD back ends, pf_b3_*.S) is plain gcc input."""
    for mod in ("setuptools._distutils.unixccompiler", "distutils.unixccompiler"):
        try:
            cc = __import__(mod, fromlist=["UnixCCompiler"]).UnixCCompiler
        except ImportError:
            continue
        if ".S" not in cc.src_extensions:
            cc.src_extensions = [*cc.src_extensions, ".S"]


def _cdef_text() -> str:
    """Declarations between the CDEF markers of the headers (cdef() has no preprocessor)."""
    parts = []
    for header in HEADERS:
        text = header.read_text()
        begin = text.index("/* CDEF-BEGIN */") + len("/* CDEF-BEGIN */")
        end = text.index("/* CDEF-END */")
        parts.append(text[begin:end])
    return "\n".join(parts)


B3 = _blake3_dir()
_allow_assembly()
ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "ploopfs._native",
    "".join(f'#include "{h.name}"\n' for h in HEADERS),
    # Relative to the project root, where setuptools runs the build.  An absolute path would
    # be baked into the generated C file and break sdists built elsewhere.
    sources=[str(src.relative_to(HERE.parent)) for src in SOURCES],
    include_dirs=[str(HERE.relative_to(HERE.parent)), B3],
    # Hash primitives come from libraries (docs/rdiff.md): BLAKE2b from libb2, MD4 from
    # nettle (OpenSSL 3 only has MD4 in its legacy provider), BLAKE3 from its official C
    # sources (pf_b3.h).
    libraries=["b2", "nettle", "pthread"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror", "-pthread"],
)

if __name__ == "__main__":
    import os

    os.chdir(HERE.parent)
    ffibuilder.compile(tmpdir=str(HERE / "build"), verbose=True)
