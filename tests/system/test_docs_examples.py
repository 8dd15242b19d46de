"""Every example command in README.md and docs/*.md runs, exits as its page says and prints
what the page shows: the docs and the behaviour must agree.

What counts as an example (new docs should keep to these conventions):

* A **session** is a fenced block (```` ``` ````, ```` ```sh ````, ```` ```console ````) with lines
  starting `$ `. Each `$ ` line is a command (continued on the next lines while a quote is open
  or the line ends with `\\`). The lines after it, up to the next `$ ` line, are what it prints
  (stdout and stderr together, as a terminal shows them); a command followed directly by the
  next `$ ` line prints nothing. `$ echo $?` after a command, with its output `N`, says that the
  command exits N; every other command must exit 0.
* A **script** is a ```` ```sh ```` or ```` ```console ```` block without `$ ` lines: each line
  that is neither blank nor a `#` comment is a command that must exit 0 (or N, given a trailing
  `# exit N` comment). Its output is not shown, so it is not compared. `NAME=value` lines set a
  variable for the block's later commands.
* A **synopsis** is a `ploopfs …` line with placeholders (`SOURCE`, `[--json]`, …) in a plain
  ```` ``` ```` block, or any inline `` `ploopfs COMMAND …` `` in the text and tables: the command
  must exist and every option it names must be an option of that command (a renamed flag fails
  here too). A `ploopfs` line of a plain block without placeholders runs like a script line.
* Other blocks (```` ```json ````, ```` ```python ````, ```` ```xml ````, diagrams, output samples
  without a command) are not examples.

Each page runs its commands in page order in its own copy of the demo sample that
tools/make_sample.py builds (disk/, versions/v0.raw … v2.raw, an empty exports/: what
docs/usage.md describes), with the copy as the working folder, `ploopfs` first on PATH, TZ=UTC.
Placeholder paths are replaced by real ones (PLACES: e.g. README's /vz/private/101/root.hdd is
the demo disk, restore.md's a folder of corpus images without a descriptor), and put back in
the output before it is compared.

Shown output matches the real output line by line, where a whitespace run matches any
whitespace run (columns move with path lengths) and
* `…` or `...` stands for any text, also across lines; a line holding only one of them for any
  number of lines;
* dates and times (`2025-11-26 10:25:00`, `Nov 26 10:25`) stand for any of the same shape, and
  the owner and group columns of an `ls -l` line for any names.

Examples that cannot run here are skipped and say why in their test id (`[not run: …]`): the
set-up, test, benchmark and fuzzing scripts (NOT_RUN), mount(8) when not root, FUSE mounts
without /dev/fuse, and the commands that use such a mount. A documented example that does not
work (in a page another change owns) is listed in KNOWN_BROKEN with the reason, as a strict
xfail keyed by its text, so it runs normally again as soon as the page changes, and fails if it
starts to work unlisted. An example shown in a state the page's own commands do not leave (a
mount the page has already taken down) runs in that state (CONTEXT). Mounts get a Mounter's
environment (tests/mounting.py), whatever a page mounted under its workspace is taken down
after it, and a page's source disks must be unchanged at the end.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import damage as dm
import pytest
from conftest import REPO, tree_hashes
from mounting import Mounter, mounts_under

from ploopfs import cli

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
VENV_BIN = REPO / ".venv" / "bin"
TIMEOUT = 300
# The demo sample's snapshot GUIDs (tools/make_sample.py fixes them; docs/usage.md shows them).
V0_GUID = "{18fe3de6-7d0c-5ea5-a9b5-1640dd09b777}"


# -- placeholders ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """`text` in a page's commands stands for `real` ({ws}: the page's workspace); `make`
    builds it first (given the workspace and the unpacked corpus)."""

    text: str
    real: str
    make: Callable[[Path, Path], None] | None = None


def _mkdir(rel: str) -> Callable[[Path, Path], None]:
    return lambda ws, _corpus: (ws / rel).mkdir(parents=True, exist_ok=True)


def _evil(ws: Path, _corpus: Path) -> None:
    """usage.md's /tmp/evil: the demo disk with a descriptor whose first <File> is /etc/passwd."""
    shutil.copytree(ws / "disk", ws / "evil")
    dm.set_text(ws / "evil" / dm.DD, "StorageData/Storage/Image[1]/File", "/etc/passwd")


def _lost_descriptor(ws: Path, corpus: Path) -> None:
    """restore.md's container: the images of corpus case plain-base-chain3 (a raw root.hdd and
    two deltas root.hdd.{d6ea…}, root.hdd.{6fe0…}), without their descriptor."""
    dst = ws / "vz/private/101/root.hdd"
    dst.mkdir(parents=True)
    for f in (corpus / "plain-base-chain3").glob("root.hdd*"):
        shutil.copy2(f, dst / f.name)


def _damaged(dirty: bool) -> Callable[[Path, Path], None]:
    """check.md's and salvage.md's damaged disk /vz/private/101/root.hdd: the demo disk with
    its top delta as a crash can leave it, the last cluster cut off (a BAT entry now points past
    the end of the file), and with `dirty` still marked in use."""
    def make(ws: Path, _corpus: Path) -> None:
        dst = ws / "vz/private/101/root.hdd"
        shutil.copytree(ws / "disk", dst)
        top = dst / "root.hds.{8396f719-edfd-52ff-9aae-cd5c46b89fd4}"
        dm.truncate_file(top, top.stat().st_size - (1 << 20))
        if dirty:
            dm.header_field(top, "m_DiskInUse", 0x746F6E59)  # "Ynot"
    return make


def _container(ws: Path, _corpus: Path) -> None:
    """mount.md's container /backup/ct101/root.hdd: the demo disk's top with a /home, as a
    container's root has, as a one-image ploop disk."""
    raw = ws / "tmp" / "ct101.raw"
    subprocess.run(["cp", "--sparse=always", str(ws / "versions" / "v2.raw"), str(raw)], check=True)
    subprocess.run(["debugfs", "-w", "-R", "mkdir /home", f"{raw}?offset=1048576"],
                   check=True, capture_output=True)
    subprocess.run([str(VENV_BIN / "ploopfs"), "export", "-f", "ploop", "--cluster-size", "1M",
                    str(raw), str(ws / "backup" / "ct101" / "root.hdd")],
                   check=True, capture_output=True)
    raw.unlink()


ANY_PAGE = [Place("/tmp/ploopfs-demo", "{ws}"), Place(".venv/bin/", f"{VENV_BIN}/")]
PLACES: dict[str, list[Place]] = {
    "README.md": [
        Place("/vz/private/101/root.hdd", "{ws}/disk"),
        Place("/backup/", "{ws}/backup/", _mkdir("backup")),
        Place("disk.raw", "versions/v2.raw"),
        Place("'{1b2c…}'", f"'{V0_GUID}'"),
        Place("/mnt/101", "{ws}/mnt/101", _mkdir("mnt/101")),
    ],
    "docs/usage.md": [
        Place("/tmp/evil", "{ws}/evil", _evil),
        Place("/mnt", "{ws}/mnt", _mkdir("mnt")),
    ],
    "docs/mount.md": [
        Place("/backup/ct101/root.hdd", "{ws}/backup/ct101/root.hdd", _container),
        Place("/mnt/ct101-fs", "{ws}/mnt/ct101-fs", _mkdir("mnt/ct101-fs")),
        Place("/mnt/ct101", "{ws}/mnt/ct101", _mkdir("mnt/ct101")),
    ],
    "docs/check.md": [
        Place("/vz/private/101/root.hdd", "{ws}/vz/private/101/root.hdd", _damaged(dirty=True)),
    ],
    "docs/salvage.md": [
        Place("/vz/private/101/root.hdd", "{ws}/vz/private/101/root.hdd", _damaged(dirty=False)),
    ],
    "docs/restore.md": [
        Place("/vz/private/101/root.hdd", "{ws}/vz/private/101/root.hdd", _lost_descriptor),
    ],
}


def places(doc: str) -> list[Place]:
    return [*PLACES.get(doc, []), *ANY_PAGE]


def _bounded(text: str) -> re.Pattern[str]:
    """`text` as a whole path or word: not inside a longer name."""
    tail = "" if text.endswith("/") else r"(?![\w-])"
    return re.compile(r"(?<![\w.-])" + re.escape(text) + tail)


def substitute(doc: str, cmd: str, ws: Path) -> str:
    for p in sorted(places(doc), key=lambda p: -len(p.text)):
        cmd = _bounded(p.text).sub(lambda _m, p=p: p.real.replace("{ws}", str(ws)), cmd)
    return cmd


def put_back(doc: str, out: str, ws: Path) -> str:
    """The real paths in the output as the page names them (longest real path first)."""
    pairs = [(p.real.replace("{ws}", str(ws)), p.text) for p in places(doc) if "{ws}" in p.real]
    for real, text in sorted(pairs, key=lambda rt: -len(rt[0])):
        out = out.replace(real, text)
    return out


# -- examples -------------------------------------------------------------------------------------
@dataclass
class Example:
    doc: str  # relative to the repository
    line: int  # 1-based line of the command in the page
    kind: str  # "session", "script" or "synopsis"
    command: str
    shown: list[str] | None = None  # the output the page shows (sessions), else None
    exit_code: int = 0
    setup: list[str] = field(default_factory=list)  # a script's NAME=value lines before it
    previous: str = ""  # the page's command before this one (runnable examples)
    blocked: str | None = None  # set when it uses a mount an earlier example cannot make here

    @property
    def not_run(self) -> str | None:
        """Why this example cannot run here, or None."""
        if self.kind == "synopsis":
            return None
        for pattern, why in NOT_RUN:
            if re.search(pattern, self.command):
                return why
        words = self.command.split()
        if os.geteuid() != 0 and words and words[0] in ("mount", "umount", "losetup"):
            return "needs root (mount(8) of a loop device)"
        if re.search(r"\b(ploopfs|\$P) mount\b", self.command) and not _fuse_usable():
            return "needs /dev/fuse and fusermount3"
        return self.blocked

    @property
    def known_broken(self) -> KnownBroken | None:
        k = KNOWN_BROKEN.get((self.doc, self.command))
        return k if k is not None and k.after in (None, self.previous) else None

    @property
    def id(self) -> str:
        text = " ".join(self.command.split()).replace("…", "...")
        text = text if len(text) <= 70 else text[:67] + "..."
        tag = f" [not run: {self.not_run}]" if self.not_run else ""
        kind = "synopsis " if self.kind == "synopsis" else ""
        return f"{self.doc}:{self.line} {kind}{text}{tag}"


# Commands that are examples but cannot run inside the test suite, with the reason.
NOT_RUN = [
    (r"^(sudo )?tools/demo\b", "the demo does the set-up as root (apt-get, venv) and runs mounts "
                               "itself; run it by hand"),
    (r"^(sudo )?tools/test\b", "runs the whole test suite (and its set-up), this test included"),
    (r"^(sudo )?tools/setup\b", "system set-up as root (apt-get): done before the tests run"),
    (r"\btools/bench/|tools/bench\.", "benchmark: minutes of load (docs/benchmarks.md)"),
    (r"\btools/fuzz/run\b", "fuzzing campaign of 10 minutes or more (tests/test_fuzz.py runs a "
                            "short one)"),
]

@dataclass(frozen=True)
class KnownBroken:
    why: str
    then: str | None = None  # run after it: what brings the workspace where the page assumes
    after: str | None = None  # only right after this command of the page (repeated commands)


# Documented examples that do not work yet, in pages another change owns: (page, command).
# Strict xfails: when the page changes, or the example works, they fail until removed here.
KNOWN_BROKEN: dict[tuple[str, str], KnownBroken] = {
}


# Examples a page shows in a state its own earlier commands do not leave: (page, command) ->
# (run before it, run after it). They run, and must pass, in that state.
CONTEXT: dict[tuple[str, str], tuple[str, str]] = {
    # shown on a mounted /mnt/ct101, which the page's first example has unmounted again
    ("docs/mount.md", "findmnt -no SOURCE,FSTYPE,OPTIONS /mnt/ct101"): (
        "ploopfs mount /backup/ct101/root.hdd /mnt/ct101", "ploopfs umount /mnt/ct101"),
    ("docs/mount.md", "df -h /mnt/ct101"): (
        "ploopfs mount /backup/ct101/root.hdd /mnt/ct101", "ploopfs umount /mnt/ct101"),
}


def _fuse_usable() -> bool:
    return os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None and (
        os.geteuid() == 0 or os.access("/dev/fuse", os.R_OK | os.W_OK))


FENCE = re.compile(r"^(\s*)```\s*([\w-]*)\s*$")
SCRIPT_LANGS = ("sh", "console", "shell", "bash")
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=\S*$")
EXIT_COMMENT = re.compile(r"#\s*exit\s+(\d+)\s*$")
PLACEHOLDER = re.compile(r"^\[|^[A-Z][A-Z0-9_]+(\.\.\.|…)?$")


def _incomplete(cmd: str) -> bool:
    if cmd.rstrip().endswith("\\"):
        return True
    try:
        shlex.split(cmd, comments=True)
    except ValueError:  # a quote still open
        return True
    return False


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def fenced_blocks(text: str) -> Iterator[tuple[str, int, list[str]]]:
    """(language, 1-based line of the first content line, content lines) per fenced block."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = len(m.group(1)), m.group(2).lower()
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        yield lang, i + 2, [ln[indent:] if ln[:indent].isspace() else ln for ln in lines[i + 1:j]]
        i = j + 1


def _session(doc: str, first: int, lines: list[str]) -> list[Example]:
    out: list[Example] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        start, cmd, j = i, lines[i][2:], i + 1
        while _incomplete(cmd) and j < len(lines):
            cmd += "\n" + lines[j]
            j += 1
        k = j
        while k < len(lines) and not lines[k].startswith("$ "):
            k += 1
        shown = _trim(lines[j:k])
        if cmd.strip() == "echo $?":
            assert out and len(shown) == 1 and shown[0].strip().isdigit(), (
                f"{doc}:{first + start}: `echo $?` must follow a command and show one number")
            out[-1].exit_code = int(shown[0])
        else:
            out.append(Example(doc, first + start, "session", cmd.strip(), shown))
        i = k
    return out


def _script(doc: str, first: int, lines: list[str], lang: str) -> list[Example]:
    out: list[Example] = []
    setup: list[str] = []
    i = 0
    while i < len(lines):
        start, cmd = i, lines[i].strip()
        i += 1
        if not cmd or cmd.startswith("#"):
            continue
        if lang == "" and not cmd.startswith("ploopfs "):
            continue  # a plain block: only ploopfs lines are examples
        while _incomplete(cmd) and i < len(lines):
            cmd += "\n" + lines[i]
            i += 1
        if cmd.startswith("ploopfs ") and any(PLACEHOLDER.match(w) for w in cmd.split()[2:]):
            # a synopsis; its indented continuation lines belong to it
            while i < len(lines) and lines[i][:1].isspace() and lines[i].strip():
                cmd += " " + lines[i].strip()
                i += 1
            out.append(Example(doc, first + start, "synopsis", cmd))
            continue
        if ASSIGNMENT.match(cmd):
            setup.append(cmd)
            continue
        m = EXIT_COMMENT.search(cmd)
        out.append(Example(doc, first + start, "script", cmd, None, int(m.group(1)) if m else 0,
                           list(setup)))
    return out


INLINE = re.compile(r"`(ploopfs [^`]+)`")


def examples_of(path: Path) -> list[Example]:
    doc = str(path.relative_to(REPO))
    text = path.read_text()
    out: list[Example] = []
    for lang, first, lines in fenced_blocks(text):
        if lang not in ("", *SCRIPT_LANGS):
            continue
        if any(ln.startswith("$ ") for ln in lines):
            out += _session(doc, first, lines)
        else:
            out += _script(doc, first, lines, lang)
    # inline synopses, outside fenced blocks
    prose = re.sub(r"(?ms)^\s*```.*?^\s*```\s*$", lambda m: "\n" * m.group(0).count("\n"), text)
    for m in INLINE.finditer(prose):
        if m.group(1).split()[1].endswith(":"):
            continue  # a message (`ploopfs export: error: …`), not a command
        line = prose.count("\n", 0, m.start()) + 1
        out.append(Example(doc, line, "synopsis", m.group(1).replace("\\|", "|")))
    out.sort(key=lambda e: e.line)
    runnable = [e for e in out if e.kind != "synopsis"]
    for prev, e in itertools.pairwise(runnable):
        e.previous = prev.command
    missing = None  # the page's last mount, if it cannot be made here: why
    for e in runnable:
        if re.search(r"^(sudo )?mount\b|\b(ploopfs|\$P) mount\b", e.command):
            missing = f"uses the mount of line {e.line}, which cannot run here" if e.not_run \
                else None
        elif missing and "/mnt" in e.command:
            e.blocked = missing
    return out


EXAMPLES = [e for p in DOCS for e in examples_of(p)]
RUNNABLE = [e for e in EXAMPLES if e.kind != "synopsis"]
SYNOPSES = [e for e in EXAMPLES if e.kind == "synopsis"]


# -- synopses -------------------------------------------------------------------------------------
def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = cli.build_parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return p, dict(action.choices)


OPTION = re.compile(r"(?:^|(?<=[\s\[(|]))(--?[A-Za-z][\w-]*)")


def _params(examples: list[Example]) -> list:
    out = []
    for e in examples:
        marks = []
        if e.known_broken and not e.not_run:
            marks.append(pytest.mark.xfail(reason=e.known_broken.why, strict=True))
        out.append(pytest.param(e, id=e.id, marks=marks))
    return out


@pytest.mark.parametrize("ex", _params(SYNOPSES))
def test_synopsis(ex: Example) -> None:
    """The command of a synopsis exists and takes every option the synopsis names."""
    text = re.split(r"\s(?:\||>|;|&&|#)\s", ex.command)[0]
    words = text.split()
    top, commands = _parsers()
    top_opts = {o for a in top._actions for o in a.option_strings}
    i = 1
    while i < len(words) and words[i].startswith("-"):
        assert words[i] in top_opts, f"{ex.id}: ploopfs has no option {words[i]}"
        i += 1
    if i == len(words) or words[i] == "COMMAND":  # `ploopfs COMMAND --help`
        allowed = top_opts | {"-h", "--help"}
    elif PLACEHOLDER.match(words[i]):  # mount.fuse3's `ploopfs SOURCE MOUNTPOINT -o OPTIONS`
        allowed = {o for a in commands["mount"]._actions for o in a.option_strings}
    else:
        assert words[i] in commands, f"{ex.id}: ploopfs has no command {words[i]!r}"
        allowed = {o for a in commands[words[i]]._actions for o in a.option_strings}
    rest = " ".join(words[i + 1:])
    unknown = sorted({o for o in OPTION.findall(rest) if o not in allowed})
    assert not unknown, f"{ex.id}: {words[i] if i < len(words) else 'ploopfs'} has no {unknown}"


# -- running ---------------------------------------------------------------------------------------
MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
TOKEN = re.compile(
    r"(?P<wild>\.\.\.|…)"
    r"|(?P<any>\x00)"
    r"|(?P<ws>[ \t]+)"
    r"|(?P<iso>\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2})?)"
    rf"|(?P<ls>\b(?:{MONTHS})[ \t]+\d{{1,2}}[ \t]+(?:\d{{2}}:\d{{2}}|\d{{4}})\b)"
    r"|(?P<ch>.)", re.S)
LS_LINE = re.compile(r"^(\s*(?:\d+\s+)?[-dlcbps][rwxsStT-]{9}[.+@]?\s+\d+\s+)\S+(\s+)\S+(?=\s)")


def shown_pattern(shown: list[str]) -> re.Pattern[str]:
    parts = []
    for line in shown:
        s = line.strip()
        if s in ("...", "…"):
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        s = LS_LINE.sub(lambda m: f"{m.group(1)}\x00{m.group(2)}\x00", s)
        rx = [r"[ \t]*"]
        for t in TOKEN.finditer(s):
            kind = t.lastgroup
            rx.append({"wild": r"[\s\S]*?", "any": r"\S+", "ws": r"\s+",
                       "iso": r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2})?",
                       "ls": rf"(?:{MONTHS})\s+\d{{1,2}}\s+(?:\d{{2}}:\d{{2}}|\d{{4}})"}.get(
                           kind or "", "") or re.escape(t.group()))
        parts.append("".join(rx) + r"[ \t]*\n")
    return re.compile("".join(parts))


def output_matches(shown: list[str], actual: str) -> bool:
    lines = _trim([ln.rstrip() for ln in actual.splitlines()])
    text = "".join(ln + "\n" for ln in lines)
    return shown_pattern(shown).fullmatch(text) is not None


class Page:
    """One page's workspace: a copy of the demo sample, its placeholders built, its commands run
    in page order."""

    def __init__(self, doc: str, root: Path, sample: Path, corpus: Callable[[], Path]) -> None:
        self.doc = doc
        self.ws = root / re.sub(r"\W", "_", doc)
        subprocess.run(["cp", "-a", "--sparse=always", f"{sample}/.", str(self.ws)], check=True)
        for d in ("tmp", "run"):
            (self.ws / d).mkdir(mode=0o700, exist_ok=True)
        for p in PLACES.get(doc, []):
            if p.make:
                p.make(self.ws, corpus())
        self.sources = {d: tree_hashes(self.ws / d) for d in ("disk", "versions")}
        self.ran: set[int] = set()  # lines of the examples run so far
        self.mounter: Mounter | None = None
        self.env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                        TZ="UTC", LC_ALL="C.UTF-8", TMPDIR=str(self.ws / "tmp"),
                        XDG_RUNTIME_DIR=str(self.ws / "run"))
        for k in ("PLOOPFS_DEMO_DIR", "COLUMNS", "LINES"):
            self.env.pop(k, None)

    def run(self, ex: Example) -> tuple[int, str, str]:
        """(exit code, output with the page's paths, the command as run)."""
        self.ran.add(ex.line)
        if re.search(r"\bploopfs mount\b|\$P mount\b", ex.command) and self.mounter is None:
            self.mounter = Mounter(self.ws)  # its cleanup() takes the FUSE mounts down
        script = "\n".join([*(substitute(self.doc, s, self.ws) for s in ex.setup),
                            substitute(self.doc, ex.command, self.ws)])
        before, after = CONTEXT.get((self.doc, ex.command), (None, None))
        if ex.known_broken and ex.known_broken.then:
            after = ex.known_broken.then
        if before:
            r = self._bash(substitute(self.doc, before, self.ws))
            assert r.returncode == 0, f"{before}: {r.stdout.decode(errors='replace')}"
        r = self._bash(script, pipefail=True)
        out = put_back(self.doc, r.stdout.decode(errors="replace"), self.ws)
        if after:
            self._bash(substitute(self.doc, after, self.ws))
        return r.returncode, out, script

    def _bash(self, script: str, pipefail: bool = False) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["bash", *(["-o", "pipefail"] if pipefail else []), "-c", script],
                              cwd=self.ws, env=self.env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT,
                              check=False)

    def run_before(self, ex: Example) -> None:
        """Run the page's earlier examples not run yet (when tests are selected one by one):
        later commands build on their outputs. Their own tests check them."""
        for e in RUNNABLE:
            if e.doc == self.doc and e.line < ex.line and e.line not in self.ran \
                    and not e.not_run:
                self.run(e)

    def close(self) -> list[str]:
        problems = []
        for e in reversed(mounts_under(self.ws)):  # kernel (loop) mounts of the examples
            if not e.fstype.startswith("fuse"):
                r = subprocess.run(["umount", e.point], capture_output=True, check=False)
                if r.returncode:
                    subprocess.run(["umount", "-l", e.point], capture_output=True, check=False)
        for e in reversed(mounts_under(self.ws)):  # FUSE mounts left up: as a user would
            if e.fstype.startswith("fuse") and not e.point.startswith(f"{self.ws}/tmp/"):
                self._bash(f"ploopfs umount {shlex.quote(e.point)}")
        if self.mounter is not None:
            problems += self.mounter.cleanup()
        if left := mounts_under(self.ws):
            problems.append(f"still mounted: {[e.point for e in left]}")
        for d, before in self.sources.items():
            if tree_hashes(self.ws / d) != before:
                problems.append(f"{self.doc}: the examples changed the sources in {d}/")
        if not problems:
            shutil.rmtree(self.ws, ignore_errors=True)
        return problems


@pytest.fixture(scope="module")
def demo_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's sample disk, built once (tools/make_sample.py, about 3 s)."""
    work = tmp_path_factory.mktemp("demo") / "ploopfs-demo"
    r = subprocess.run([str(VENV_BIN / "python"), str(REPO / "tools" / "make_sample.py"),
                        str(work)], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return work


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory, demo_sample: Path,
          request: pytest.FixtureRequest) -> Iterator[Callable[[str], Page]]:
    root = tmp_path_factory.mktemp("pages")
    opened: dict[str, Page] = {}

    def page(doc: str) -> Page:
        if doc not in opened:
            opened[doc] = Page(doc, root, demo_sample,
                               lambda: request.getfixturevalue("corpus_root"))
        return opened[doc]

    yield page
    problems = [p for pg in opened.values() for p in pg.close()]
    assert not problems, problems


@pytest.mark.parametrize("ex", _params(RUNNABLE))
def test_example(ex: Example, pages: Callable[[str], Page]) -> None:
    """The command exits with the code its page gives (0 unless `echo $?` or `# exit N` says
    otherwise) and, where the page shows output, prints that."""
    if ex.not_run:
        pytest.skip(ex.not_run)
    page = pages(ex.doc)
    page.run_before(ex)
    code, out, script = page.run(ex)
    where = f"{ex.doc}:{ex.line}: $ {script}"
    if code != ex.exit_code:
        pytest.fail(f"exit {code}, the page says {ex.exit_code}\n{where}\n--- output ---\n{out}",
                    pytrace=False)
    if ex.shown is not None and not output_matches(ex.shown, out):
        diff = difflib.unified_diff(ex.shown, _trim([ln.rstrip() for ln in out.splitlines()]),
                                    "the page shows", "the command printed", lineterm="")
        pytest.fail(f"output differs from the page\n{where}\n" + "\n".join(diff), pytrace=False)


def test_examples_found() -> None:
    """The extraction finds the pages' examples (guards against a parser that finds nothing)."""
    per_doc = {d: sum(e.doc == d for e in RUNNABLE) for d in ("README.md", "docs/usage.md")}
    assert per_doc["README.md"] >= 8 and per_doc["docs/usage.md"] >= 15, per_doc
    assert len(SYNOPSES) >= 20
