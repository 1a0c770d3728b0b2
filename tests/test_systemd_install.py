"""systemd/README.md as written: its install steps yield a pipeline that checks clean under the unit.

The README's shell commands are read from the README itself and replayed into a temporary root
that mirrors the unit's paths: files are installed where it says, the credential it tells the admin
to create is created, and `$CREDENTIALS_DIRECTORY` holds what the unit's `LoadCredential=` lines
would load from there, nothing else. The `ce-daemon check` commands it documents are run as written
(with `systemd-run`'s `-p LoadCredential=` turned into the same directory, since no systemd runs
here).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ce_file.sink import FileSinkOptions

from ce_daemon.config.load import load_pipeline
from ce_daemon.logs.job import routes_of
from ce_daemon.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "systemd" / "README.md"
UNIT = ROOT / "systemd" / "ce-daemon.service"
CREDENTIAL_VALUE = "credential-created-by-the-test"


def unit_settings() -> dict[str, list[str]]:
    """The unit's ``Key=value`` lines, every value of each key in order."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def readme_commands() -> list[list[str]]:
    """Every command of the README's ``sh`` blocks, split into words, without ``sudo``."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.DOTALL)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words[1:] if words[0] == "sudo" else words)
    return commands


def inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def credentials_from(pairs: list[str], root: Path, directory: Path) -> Path:
    """What systemd would put in ``$CREDENTIALS_DIRECTORY`` for ``LoadCredential=ID:PATH`` lines."""
    directory.mkdir()
    for pair in pairs:
        name, _, source = pair.partition(":")
        if inside(root, source).is_file():
            shutil.copy(inside(root, source), directory / name)
    return directory


def install_as_the_readme_says(root: Path) -> None:
    """Replay the README's ``install`` and credential-creating commands into ``root``."""
    for words in readme_commands():
        if words[0] == "install":
            mode = int(words[words.index("-m") + 1], 8) if "-m" in words else 0o755
            operands = [
                w for i, w in enumerate(words[1:], 1) if not w.startswith("-") and words[i - 1] != "-m"
            ]
            if "-d" in words:
                for directory in operands:
                    inside(root, directory).mkdir(mode=mode, parents=True, exist_ok=True)
                continue
            source, target = ROOT / operands[0], inside(root, operands[1])
            if operands[1].endswith("/"):
                target = target / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
            target.chmod(mode)
        elif words[:2] == ["sh", "-c"] and "cat > " in words[2]:
            target = inside(root, words[2].split("cat > ", 1)[1].strip())
            target.write_text(CREDENTIAL_VALUE + "\n")
            target.chmod(0o600)


def run_documented_check(
    words: list[str], root: Path, credentials: Path | None
) -> subprocess.CompletedProcess[str]:
    """A documented ``ce-daemon check …`` command, its absolute paths taken inside ``root``."""
    arguments = [str(inside(root, w)) if w.startswith("/etc/") else w for w in words[1:]]
    environment = {"PATH": "/usr/bin:/bin"}
    if credentials is not None:
        environment["CREDENTIALS_DIRECTORY"] = str(credentials)
    return subprocess.run(
        [sys.executable, "-m", "ce_daemon", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    install_as_the_readme_says(root)
    return root


def test_installed_example_checks_clean_with_the_units_credentials(installed: Path, tmp_path: Path) -> None:
    """The unit's own `check` (ExecReload=), with only the credentials the README creates, exits 0."""
    unit = unit_settings()
    credentials = credentials_from(unit["LoadCredential"], installed, tmp_path / "credentials")
    assert sorted(p.name for p in credentials.iterdir()) == ["netskope-token"]
    check = next(shlex.split(c) for c in unit["ExecReload"] if " check " in c)
    result = run_documented_check(check, installed, credentials)
    assert result.returncode == 0, result.stderr
    assert "not verified" not in result.stdout + result.stderr


def test_installed_example_uses_the_units_directories(installed: Path, tmp_path: Path) -> None:
    """The installed pipeline keeps its state in StateDirectory= and writes files under LogsDirectory=."""
    unit = unit_settings()
    credentials = credentials_from(unit["LoadCredential"], installed, tmp_path / "credentials")
    pipeline = inside(installed, shlex.split(unit["ExecStart"][0])[-1])
    loaded = load_pipeline(pipeline, Registry.discover(), environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert loaded.config.state.path.parent == Path("/var/lib") / unit["StateDirectory"][0]
    assert loaded.tenants["acme"].token.get_secret_value() == CREDENTIAL_VALUE
    writable = [Path("/var/log") / unit["LogsDirectory"][0], *map(Path, unit.get("ReadWritePaths", []))]
    files = [r.sink_options for r in routes_of(loaded).values() if r.config.enabled and r.sink.name == "file"]
    assert files
    for options in files:
        assert isinstance(options, FileSinkOptions)
        assert any(directory in options.path.parents for directory in writable), options.path


def test_documented_checks_run_as_written(installed: Path, tmp_path: Path) -> None:
    """Step 5's two commands: from a shell with --allow-unresolved-secrets, and in a transient unit."""
    commands = [w for w in readme_commands() if any(word.endswith("bin/ce-daemon") for word in w)]
    from_shell = next(w for w in commands if w[0].endswith("bin/ce-daemon"))
    result = run_documented_check(from_shell, installed, None)
    assert result.returncode == 0, result.stderr
    assert "tenants[0].token: not verified: credential 'netskope-token'" in result.stderr

    transient = next(w for w in commands if w[0] == "systemd-run")
    pairs = [w.split("=", 1)[1] for w in transient if w.startswith("LoadCredential=")]
    credentials = credentials_from(pairs, installed, tmp_path / "transient")
    command = transient[next(i for i, w in enumerate(transient) if w.endswith("bin/ce-daemon")) :]
    result = run_documented_check(command, installed, credentials)
    assert result.returncode == 0, result.stderr
