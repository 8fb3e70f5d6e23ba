"""Rebuilds the Dockerfile's build stage without a Docker engine.

Reads the Dockerfile, lays out exactly what the build stage's COPY instructions bring from the
build context (honouring .dockerignore the way Docker does), and runs the stage's
`cargo build` there with `--locked`. A file the build needs that no COPY brings fails here as
it would fail `docker build`.

The build runs in the debug profile without debug info, in a target directory of its own
(target/docker-context-target): the profile changes code generation, not what the context
must contain, and a target directory shared with the repository's own build would let cargo
take one tree's build for the other's.

Usage: python scripts/docker_context.py [--dockerfile Dockerfile] [--stage build]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

from docker.utils.build import exclude_paths
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent


class ContextError(Exception):
    """The Dockerfile cannot be reproduced as written."""


def read_ignore_patterns(context: Path) -> list[str]:
    ignore = context / ".dockerignore"
    if not ignore.exists():
        return []
    lines = ignore.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def stage_instructions(parser: DockerfileParser, stage: str) -> list[dict]:
    """The instructions of the stage named `stage`, after its FROM."""
    instructions: list[dict] = []
    current = None
    for item in parser.structure:
        if item["instruction"] == "FROM":
            words = item["value"].split()
            current = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            continue
        if current == stage:
            instructions.append(item)
    if not instructions:
        raise ContextError(f"the Dockerfile has no stage named {stage!r}")
    return instructions


def copy_sources(value: str) -> tuple[list[str], str]:
    """The sources and destination of a COPY from the build context."""
    words = shlex.split(value)
    flags = [w for w in words if w.startswith("--")]
    if any(flag.startswith("--from") for flag in flags):
        raise ContextError(f"COPY {value}: copies from another stage, not from the context")
    paths = [w for w in words if not w.startswith("--")]
    if len(paths) < 2:
        raise ContextError(f"COPY {value}: needs a source and a destination")
    return paths[:-1], paths[-1]


def lay_out(context: Path, included: set[str], sources: list[str], dest: str, root: Path) -> None:
    """Copies `sources` (context-relative) to `dest` (absolute in the image) under `root`."""
    target = root / dest.lstrip("/")
    into_directory = dest.endswith("/") or len(sources) > 1
    for source in sources:
        source = source.rstrip("/")
        if source not in included:
            raise ContextError(
                f"COPY source {source!r} is missing from the build context "
                "(absent, or excluded by .dockerignore)"
            )
        origin = context / source
        if origin.is_dir():
            prefix = f"{source}/"
            for path in sorted(p for p in included if p.startswith(prefix)):
                file = context / path
                if file.is_file():
                    copied = target / path[len(prefix) :]
                    copied.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, copied)
        else:
            copied = target / origin.name if into_directory else target
            copied.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, copied)


def cargo_build(value: str) -> list[str]:
    """The `cargo build` command of a RUN instruction, in the debug profile."""
    for command in value.split("&&"):
        words = shlex.split(command.replace("\\\n", " "))
        if words[:2] == ["cargo", "build"]:
            if "--locked" not in words:
                raise ContextError(f"RUN {command.strip()}: cargo build must use --locked")
            return [w for w in words if w != "--release"]
    raise ContextError("the stage has no RUN with cargo build")


def rebuild(dockerfile: Path, stage: str, workspace: Path) -> Path:
    """Lays out the stage's context in `workspace` and builds there; returns the workdir."""
    context = dockerfile.parent
    included = exclude_paths(str(context), read_ignore_patterns(context), dockerfile.name)
    included = {PurePosixPath(p).as_posix() for p in included}
    parser = DockerfileParser(path=str(dockerfile))
    if workspace.exists():
        shutil.rmtree(workspace)
    workdir = PurePosixPath("/")
    build = None
    for item in stage_instructions(parser, stage):
        if item["instruction"] == "WORKDIR":
            workdir = workdir / item["value"]
        elif item["instruction"] == "COPY":
            sources, dest = copy_sources(item["value"])
            absolute = dest if dest.startswith("/") else f"{workdir}/{dest}"
            if dest.endswith("/") and not absolute.endswith("/"):
                absolute += "/"
            lay_out(context, included, sources, absolute, workspace)
        elif item["instruction"] == "RUN" and "cargo build" in item["value"]:
            build = cargo_build(item["value"])
    if build is None:
        raise ContextError(f"stage {stage!r} runs no cargo build")
    directory = workspace / str(workdir).lstrip("/")
    environment = dict(
        os.environ,
        CARGO_TARGET_DIR=str(ROOT / "target" / "docker-context-target"),
        CARGO_PROFILE_DEV_DEBUG="0",
    )
    print(f"docker_context: {' '.join(build)} in {directory}", file=sys.stderr)
    subprocess.run(build, cwd=directory, env=environment, check=True)
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    parser.add_argument("--stage", default="build")
    parser.add_argument("--workspace", type=Path, default=ROOT / "target" / "docker-context")
    args = parser.parse_args()
    try:
        rebuild(args.dockerfile.resolve(), args.stage, args.workspace)
    except ContextError as err:
        print(f"docker_context: {args.dockerfile}: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(
            f"docker_context: the build stage fails with the context the Dockerfile copies "
            f"(exit {err.returncode})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
