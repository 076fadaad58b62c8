"""Build the dockerdns image with no registry: a local Debian base, wheels fetched on the host.

Rule 1: the repository's Dockerfile is used unchanged; only build arguments
        differ from a user's `docker build .`: BASE (the local base image) and
        PIP_OPTIONS (pip installs from the wheels in the context, no index).
Rule 2: the slow inputs are made only when missing: the base image by its tag
        (mmdebstrap of Debian bookworm with python3 and pip, `docker import`ed),
        the wheels by a key of the requirements they were fetched for.
Rule 3: nothing inside the build reaches a network; the host fetches Debian
        packages (mmdebstrap) and wheels (pip download) before it.

Used by tests/test_image.py; by hand: `python3 tests/image/offline.py [TAG]`.
Not thread-safe; call it from one thread.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_IMAGE = "dockerdns-test/python-base:bookworm"
IMAGE = "dockerdns-test/dockerdns:latest"
CACHE = os.environ.get("DOCKERDNS_TEST_CACHE", "/var/cache/dockerdns-test")

SUITE = "bookworm"
BASE_PYTHON = "3.11"  # bookworm's python3: the wheels must fit it
BASE_PACKAGES = "python3,python3-pip,ca-certificates"
BUILD_REQUIREMENTS = ["setuptools>=40.8", "wheel"]  # pip builds /src in an isolated environment
# Debian's docs, man pages and translations are no use in an image.
PATH_EXCLUDES = ["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*"]
PATH_INCLUDES = ["/usr/share/doc/*/copyright"]
IMPORT_CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
]

MMDEBSTRAP_TIMEOUT = 600  # seconds; about 25-50 s with a reachable mirror
PIP_TIMEOUT = 300  # seconds for `pip download`


class ImageError(RuntimeError):
    """A step of the offline build failed; str() says which and why."""


def _image_exists(client: Any, tag: str) -> bool:
    import docker

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def ensure_base(client: Any, tag: str = BASE_IMAGE) -> str:
    """Make the local Python base image unless `tag` exists; return the tag."""
    if _image_exists(client, tag):
        return tag
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap is missing (apt-get install mmdebstrap); it makes the local base image")
    command = ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={BASE_PACKAGES}"]
    # merged /usr without the usrmerge package, which would pull in perl (~50 MB).
    command.append("--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr")
    command += [f"--dpkgopt=path-exclude={path}" for path in PATH_EXCLUDES]
    command += [f"--dpkgopt=path-include={path}" for path in PATH_INCLUDES]
    command += [SUITE, "-"]  # "-": the root file system as a tar on stdout
    with tempfile.TemporaryFile() as log:
        strap = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        changes = [arg for change in IMPORT_CHANGES for arg in ("-c", change)]
        imported = subprocess.run(
            ["docker", "import", *changes, "-", tag],
            stdin=strap.stdout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            timeout=MMDEBSTRAP_TIMEOUT,
        )
        assert strap.stdout is not None
        strap.stdout.close()
        status = strap.wait(timeout=60)
        if status != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-10:]
            raise ImageError(f"mmdebstrap failed (exit {status}):\n" + "\n".join(tail))
    if imported.returncode != 0:
        raise ImageError(f"docker import of {tag} failed: {imported.stderr.strip()}")
    return tag


def requirements() -> list[str]:
    """dockerdns's install_requires (from setup.cfg) plus what pip needs to build it."""
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    lines = parser.get("options", "install_requires", fallback="").splitlines()
    return [line.strip() for line in lines if line.strip()] + BUILD_REQUIREMENTS


def ensure_wheels(cache: str = CACHE) -> str:
    """A directory of wheels for the base's Python with every requirement; fetched unless cached."""
    reqs = requirements()
    arch = platform.machine()
    key = hashlib.sha256("\n".join([BASE_PYTHON, arch, *reqs]).encode()).hexdigest()[:12]
    wheels = os.path.join(cache, f"wheels-{key}")
    if os.path.isdir(wheels) and os.listdir(wheels):
        return wheels
    os.makedirs(cache, exist_ok=True)
    partial = tempfile.mkdtemp(prefix="wheels-", dir=cache)
    # Binary wheels only, for the base's interpreter, not the one running this.
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               "--dest", partial, "--only-binary=:all:", "--implementation", "cp",
               "--python-version", BASE_PYTHON, "--platform", f"manylinux2014_{arch}", *reqs]
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=PIP_TIMEOUT)
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise ImageError(f"pip download failed (exit {done.returncode}):\n{done.stdout.strip()[-2000:]}")
    try:
        os.rename(partial, wheels)  # whole or not at all; another run may have won the race
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
    return wheels


def build_args(base: str = BASE_IMAGE) -> dict[str, str]:
    """The build arguments of an offline build (Rule 1): the local base, pip on the context's wheels."""
    return {"BASE": base, "PIP_OPTIONS": "--no-index --find-links=/src/wheels"}


def build(client: Any, tag: str = IMAGE, labels: dict[str, str] | None = None) -> str:
    """Build the image from the repository's Dockerfile into `tag`, offline; return the image id."""
    base = ensure_base(client)
    wheels = ensure_wheels()
    with tempfile.TemporaryDirectory(prefix="dockerdns-context-") as tmp:
        context = os.path.join(tmp, "context")
        # The working tree as it is (uncommitted files too); .dockerignore picks from it.
        ignore = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".*cache", ".hypothesis",
                                        "wheels")
        shutil.copytree(ROOT, context, ignore=ignore, symlinks=True)
        shutil.copytree(wheels, os.path.join(context, "wheels"))
        log: list[str] = []
        image_id = ""
        for chunk in client.api.build(path=context, tag=tag, buildargs=build_args(base), labels=labels or {},
                                      rm=True, forcerm=True, pull=False, decode=True):
            if "error" in chunk:
                raise ImageError(f"docker build failed: {chunk['error'].strip()}\n" + "".join(log[-20:]))
            log.append(chunk.get("stream", ""))
            image_id = chunk.get("aux", {}).get("ID", image_id)
    match = re.search(r"Successfully built ([0-9a-f]+)", "".join(log))
    return image_id or (match.group(1) if match else client.images.get(tag).id)


def main(argv: list[str]) -> int:
    import docker

    tag = argv[0] if argv else IMAGE
    client = docker.from_env(version="auto")
    try:
        image_id = build(client, tag)
    except ImageError as exc:
        print(f"offline: {exc}", file=sys.stderr)
        return 1
    print(f"offline: built {tag} ({image_id[:19]}) from {BASE_IMAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
