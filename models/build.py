#!/usr/bin/env python3
"""Produce lpmesh's models, fetch its ONNX Runtime library and its test footage, from registry packages only.

    python3 models/build.py            # runtime, footage and models (everything but the opt-in `openvino`)
    python3 models/build.py runtime    # only the ONNX Runtime library
    python3 models/build.py footage    # only the test footage (Debian package)
    python3 models/build.py models     # only the models (fetches the footage too: int8 calibrates on it)
    python3 models/build.py evaluate   # compare int8 with fp32 on the footage (accuracy and speed), ~1 min
    python3 models/build.py calibrate  # maintainers: rewrite the int8 calibration table, then re-pin sha256s
    python3 models/build.py openvino   # opt-in, not in the default: ONNX Runtime's OpenVINO execution provider
                                       #   (~108 MB; Intel CPUs, and Intel NPUs through Intel's NPU driver)
    python3 models/build.py --print-cache

Everything lands in the cache (``$LPMESH_CACHE``, else ``$XDG_CACHE_HOME/lpmesh``, else ``~/.cache/lpmesh``),
never in the repository. Each artefact is checked against the sha256 in ``manifest.toml``; a mismatch stops
the build with a message that says which file, what was expected and what was found. Running it again when
everything is in place only re-hashes the cached files.

Only the standard library is used here. The converter (requirements-convert.txt) and the tools that
canonicalise, quantise and evaluate (requirements-tools.txt, scripts in tools/) run in throwaway virtual
environments, installed from fully pinned lists and removed when this script exits.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from contextlib import ExitStack
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


# Set by `calibrate` only: a maintainer rewriting the calibration table re-pins the int8 model afterwards.
ALLOW_UNPINNED = False


def check_sha(path: Path, expected: str, what: str) -> None:
    actual = sha256_of(path)
    if not expected:
        if not ALLOW_UNPINNED:
            raise BuildError(f"no sha256 pinned for {what} in {MANIFEST.name} (found {actual}): nothing unverified "
                             f"is installed")
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


def install_dir_atomically(staged: Path, dest: Path) -> None:
    """Put the complete directory `staged` (a sibling of `dest`, so on the same file system) in place of `dest`.

    A fresh install appears at once, whole. Replacing an existing `dest` takes two renames (rename(2) cannot
    replace a non-empty directory), between which `dest` is briefly absent, never partial.
    """
    old = dest.with_name(dest.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(staged, dest)
    if old.exists():
        shutil.rmtree(old)


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


# --- OpenVINO execution provider (opt-in) -------------------------------------------------------------------


def openvino_dir(manifest: dict) -> Path:
    ov = manifest["openvino"]
    return cache_dir() / ov["install_dir"] / ov["version"]


def openvino_path(manifest: dict) -> Path:
    """The plugin library to register with ONNX Runtime; its dependencies sit beside it."""
    return openvino_dir(manifest) / manifest["openvino"]["plugin"]


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(m.group()) if (m := re.match(r"\d+", part)) else 0 for part in version.split("."))


def check_openvino_supported(manifest: dict) -> None:
    ov, rt = manifest["openvino"], manifest["runtime"]
    what = f"{ov['pypi_package']} {ov['version']}"
    machine = platform.machine()
    if sys.platform != "linux" or machine != "x86_64":
        raise BuildError(f"{what} is fetched for x86_64 Linux only ({ov['wheel']}); this is {sys.platform} on "
                         f"{machine}. Nothing was downloaded.")
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc = ""
    name, _, version = libc.partition(" ")
    if name != "glibc" or version_tuple(version) < (2, 28):
        raise BuildError(f"{what} needs glibc >= 2.28 ({ov['platform']}); this system has "
                         f"{libc or 'no glibc'}. Nothing was downloaded.")
    if version_tuple(rt["version"]) < version_tuple(ov["min_onnxruntime"]):
        raise BuildError(f"{what} is a plugin for ONNX Runtime >= {ov['min_onnxruntime']} (the plugin "
                         f"execution-provider API), but [runtime] in {MANIFEST.name} pins {rt['version']}. "
                         f"Nothing was downloaded.")


def build_openvino(manifest: dict) -> Path:
    if "openvino" not in manifest:
        raise BuildError(f"no [openvino] section in {MANIFEST.name}")
    ov = manifest["openvino"]
    check_openvino_supported(manifest)
    dest, files = openvino_dir(manifest), ov["files"]
    what = f"OpenVINO execution provider {ov['version']}"
    if dest.is_dir():
        # OpenVINO loads every device plugin it finds beside libopenvino.so: nothing unpinned may sit there.
        extra = sorted(p.name for p in dest.iterdir() if p.name not in files)
        if extra:
            raise BuildError(f"{dest} holds files the manifest does not pin: {', '.join(extra)}. Remove {dest} "
                             f"and run `build.py openvino` again.")
        missing = [name for name in files if not (dest / name).is_file()]
        if not missing:
            try:
                for name, sha in files.items():
                    check_sha(dest / name, sha, f"{what}: {name}")
            except BuildError as e:
                raise BuildError(f"{e}\nThe installed copy differs from the manifest: remove {dest} and run "
                                 f"`build.py openvino` again.") from e
            step(f"{what} up to date: {openvino_path(manifest)}")
            return openvino_path(manifest)
        step(f"{dest} lacks {', '.join(missing)}; installing it again")
    spec = f"{ov['pypi_package']}=={ov['version']}"
    staged = dest.with_name(dest.name + ".partial")
    with tempfile.TemporaryDirectory(prefix="lpmesh-openvino-") as tmp:
        step(f"downloading {spec} from PyPI (~53 MB, OpenVINO {ov['openvino_version']}; "
             f"{len(files)} of its libraries are kept)")
        run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--progress-bar", "on",
             "--platform", ov["platform"], "-d", tmp, spec]
        )
        wheel = Path(tmp) / ov["wheel"]
        if not wheel.is_file():
            raise BuildError(f"pip download {spec} left {[p.name for p in Path(tmp).iterdir()]}, "
                             f"expected {ov['wheel']}")
        check_sha(wheel, ov["wheel_sha256"], f"wheel {wheel.name}")
        if staged.exists():
            shutil.rmtree(staged)
        staged.mkdir(parents=True)
        try:
            with zipfile.ZipFile(wheel) as z:
                for name, sha in files.items():
                    member = f"{ov['wheel_dir']}/{name}"
                    try:
                        with z.open(member) as src, (staged / name).open("wb") as out:
                            shutil.copyfileobj(src, out, 1 << 20)
                    except KeyError as e:
                        raise BuildError(f"{wheel.name} has no {member}") from e
                    check_sha(staged / name, sha, f"{what}: {name} from {wheel.name}")
            install_dir_atomically(staged, dest)
        finally:
            if staged.exists():
                shutil.rmtree(staged)
    step(f"{what} installed: {openvino_path(manifest)} (register it with ONNX Runtime "
         f"{manifest['runtime']['version']} as {ov['ep_name']})")
    return openvino_path(manifest)


# --- footage ------------------------------------------------------------------------------------------------


def footage_path(clip: dict) -> Path:
    return cache_dir() / "data" / clip["file"]


def find_footage(manifest: dict, name: str) -> dict:
    for clip in manifest.get("footage", []):
        if clip["name"] == name:
            return clip
    raise BuildError(f"no [[footage]] named {name!r} in {MANIFEST.name}")


def build_footage(clip: dict) -> Path:
    dest = footage_path(clip)
    if dest.exists():
        check_sha(dest, clip["sha256"], f"footage {dest.name}")
        step(f"footage {clip['name']} up to date: {dest}")
        return dest
    src = clip["source"]
    if src["registry"] != "debian":
        raise BuildError(f"footage {clip['name']}: registry {src['registry']!r} is not supported")
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise BuildError(
                f"{tool} is not available: the footage comes from the Debian package {src['package']}. On another "
                f"system, put {clip['file']} (sha256 {clip['sha256']}) at {dest} by hand."
            )
    spec = f"{src['package']}={src['version']}"
    with tempfile.TemporaryDirectory(prefix="lpmesh-footage-") as tmp_s:
        tmp = Path(tmp_s)
        step(f"downloading Debian package {spec} (~96 MB; only {Path(src['path']).name} is kept)")
        # `apt-get download` needs no root: it writes into the current directory, not the apt cache. As root it
        # warns that the sandbox user cannot write there and downloads unsandboxed; that is harmless.
        proc = subprocess.run(["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(
                f"apt-get download {spec} failed:\n{proc.stderr.strip()}\n"
                f"If apt does not know version {src['version']}, run `apt-get update`, or check that a Debian "
                f"release carrying it is in the sources (`apt-cache policy {src['package']}`)."
            )
        debs = list(tmp.glob(f"{src['package']}_*.deb"))
        if len(debs) != 1:
            raise BuildError(f"apt-get download {spec} left {[p.name for p in tmp.iterdir()]}, expected one .deb")
        run(["dpkg", "-x", str(debs[0]), str(tmp / "root")])
        extracted = tmp / "root" / src["path"]
        if not extracted.is_file():
            raise BuildError(f"{debs[0].name} has no {src['path']}")
        check_sha(extracted, clip["sha256"], f"footage {clip['file']} from {debs[0].name}")
        install_atomically(extracted, dest)
    step(f"footage {clip['name']} installed: {dest}")
    return dest


# --- throwaway environments ----------------------------------------------------------------------------------


class Envs:
    """Virtual environments made on first use from a pinned requirements file, removed when the build ends."""

    def __init__(self, stack: ExitStack):
        self.stack = stack
        self.root: Path | None = None
        self.made: dict[str, Path] = {}

    def python(self, requirements: str) -> Path:
        if requirements in self.made:
            return self.made[requirements]
        if self.root is None:
            self.root = Path(self.stack.enter_context(tempfile.TemporaryDirectory(prefix="lpmesh-venv-")))
        req = HERE / requirements
        if not req.is_file():
            raise BuildError(f"{req} is missing")
        venv = self.root / req.stem
        step(f"creating a throwaway environment from {requirements}")
        run([sys.executable, "-m", "venv", str(venv)])
        py = venv / "bin" / "python"
        # --no-deps: the file is the whole environment, so nothing unpinned can slip in; a package missing from
        # it shows up in `pip check` below instead of being resolved to whatever is newest today.
        run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "-r", str(req)])
        run([str(py), "-m", "pip", "check", "--disable-pip-version-check"], stdout=subprocess.DEVNULL)
        self.made[requirements] = py
        return py


# oneDNN off: TensorFlow only loads the graph here, and its oneDNN kernels are CPU-dependent, so nothing it might
# fold on the way should depend on which CPU did the build.
TOOL_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONNOUSERSITE": "1"}


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


def find_model(manifest: dict, name: str) -> dict:
    for m in manifest["model"]:
        if m["name"] == name:
            return m
    raise BuildError(f"no [[model]] named {name!r} in {MANIFEST.name}")


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


def install_model(model: dict, produced: Path) -> Path:
    dest = model_path(model)
    check_sha(produced, model["output_sha256"], f"model {produced.name}")
    install_atomically(produced, dest)
    card = HERE / model["card"]
    if card.exists():
        install_atomically(card, dest.with_suffix(".md"))
    step(f"model {model['name']} installed: {dest}")
    return dest


def convert_model(model: dict, envs: Envs) -> Path:
    source, conv = model["source"], model["convert"]
    with tempfile.TemporaryDirectory(prefix="lpmesh-model-") as tmp_s:
        tmp = Path(tmp_s)
        tarball = fetch_npm(source, tmp)
        step(f"extracting {', '.join(source['files'])}")
        with tarfile.open(tarball) as tar:
            for member in source["files"]:
                tar.extract(member, tmp, filter="data")
        py = envs.python(conv["requirements"])
        shim = tmp / "convert.py"
        shim.write_text(CONVERT_SHIM)
        raw = tmp / "converted.onnx"
        step(f"converting {source['graph']} to ONNX (opset {conv['opset']})")
        run([str(py), str(shim), "--tfjs", str(tmp / source["graph"]), "--output", str(raw),
             "--opset", str(conv["opset"])], env=TOOL_ENV, cwd=tmp)
        out = tmp / model["output"]
        doc = (f"{model['upstream']}; converted from npm {source['package']}@{source['version']} "
               f"{source['graph']} by {conv['tool']}, opset {conv['opset']}; canonicalised by lpmesh models/build.py")
        step("canonicalising the converted graph")
        run([str(envs.python(conv["tools_requirements"])), str(HERE / conv["canonicalize"]), str(raw), str(out),
             "--doc", doc], env=TOOL_ENV)
        return install_model(model, out)


def quantize_model(manifest: dict, model: dict, envs: Envs, write_ranges: bool = False) -> Path:
    q = model["quantize"]
    base = find_model(manifest, q["from"])
    fp32 = build_model(manifest, base, envs)
    clip = build_footage(find_footage(manifest, q["calibration_footage"]))
    py = envs.python(q["requirements"])
    with tempfile.TemporaryDirectory(prefix="lpmesh-quant-") as tmp_s:
        out = Path(tmp_s) / model["output"]
        step(f"quantising {base['name']} to {model['name']} ({q['format']}, {q['weight_type']} per-channel weights, "
             f"{q['activation_type']} activations, {q['calibrate_method']} on {q['calibration_frames']} frames and {q.get('calibration_zoom_crops', 0)} zoomed crops)")
        cmd = [str(py), str(HERE / "tools" / "quantize.py"), "--manifest", str(MANIFEST), "--model", model["name"],
               "--fp32", str(fp32), "--footage", str(clip), "--out", str(out)]
        if write_ranges:
            cmd += ["--write-ranges", str(HERE / q["calibration_ranges"])]
        run(cmd, env=TOOL_ENV)
        if write_ranges:
            # Not installed: the pinned sha256 describes the previous table until someone re-pins it.
            step(f"new calibration table {q['calibration_ranges']} written; {out.name} now has sha256\n"
                 f"    {sha256_of(out)}\n  pin it as output_sha256 in {MANIFEST.name}, then run `build.py models`")
            return out
        return install_model(model, out)


def build_model(manifest: dict, model: dict, envs: Envs) -> Path:
    dest = model_path(model)
    if dest.exists():
        found = sha256_of(dest)
        if found == model["output_sha256"]:
            step(f"model {model['name']} up to date: {dest}")
            return dest
        # The cache holds another version (the manifest moved on, or the file was damaged): build the pinned
        # one; it replaces the old only once it has passed its own checksum.
        step(f"model {model['name']} in the cache is not the pinned one (sha256 {found}); building it again")
    if "quantize" in model:
        return quantize_model(manifest, model, envs)
    return convert_model(model, envs)


def evaluate(manifest: dict, envs: Envs) -> None:
    for model in manifest["model"]:
        if "quantize" not in model:
            continue
        q = model["quantize"]
        base = find_model(manifest, q["from"])
        cand_path = build_model(manifest, model, envs)
        base_path = build_model(manifest, base, envs)
        clip = build_footage(find_footage(manifest, q["calibration_footage"]))
        report = cache_dir() / "reports" / f"{model['name']}.eval.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        step(f"evaluating {model['name']} against {base['name']} on every frame of {clip.name} (about a minute)")
        run([str(envs.python(q["requirements"])), str(HERE / "tools" / "evaluate.py"), "--manifest", str(MANIFEST),
             "--reference", base["name"], "--candidate", model["name"], "--reference-model", str(base_path),
             "--candidate-model", str(cand_path), "--footage", str(clip), "--json", str(report)], env=TOOL_ENV)
        step(f"report written: {report}")


def main(argv: list[str]) -> int:
    with MANIFEST.open("rb") as f:
        manifest = tomllib.load(f)
    what = argv[1] if len(argv) > 1 else "all"
    try:
        with ExitStack() as stack:
            envs = Envs(stack)
            if what == "--print-cache":
                print(cache_dir())
            elif what == "runtime":
                build_runtime(manifest)
            elif what == "footage":
                for clip in manifest.get("footage", []):
                    build_footage(clip)
            elif what == "models":
                for m in manifest["model"]:
                    build_model(manifest, m, envs)
            elif what == "all":
                build_runtime(manifest)
                for clip in manifest.get("footage", []):
                    build_footage(clip)
                for m in manifest["model"]:
                    build_model(manifest, m, envs)
            elif what == "openvino":
                build_openvino(manifest)
            elif what == "evaluate":
                evaluate(manifest, envs)
            elif what == "calibrate":
                global ALLOW_UNPINNED
                ALLOW_UNPINNED = True
                for m in manifest["model"]:
                    if "quantize" in m:
                        quantize_model(manifest, m, envs, write_ranges=True)
            else:
                print(__doc__, file=sys.stderr)
                return 2
    except BuildError as e:
        print(f"[models] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
