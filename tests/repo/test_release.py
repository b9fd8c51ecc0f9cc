"""The release workflow (.github/workflows/release.yaml) cannot run here (it pushes to ghcr.io and signs through
GitHub's OIDC issuer), so these tests hold it to the facts that matter: it runs only for a version tag, every action
is pinned by commit, each job has only the permissions it uses, the image is multi-arch from the Dockerfile with its
base pinned by digest and an SBOM attached, signatures are made by digest, the chart goes to an OCI registry, and
the chart installs by default exactly the image the workflow publishes. Its own shell steps (the version check)
run for real, and actionlint (what `make lint` runs) passes on it and fails on a broken copy."""

from __future__ import annotations

import re
import subprocess
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from graphcred_testbed.binaries import binary

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yaml"
CHART = ROOT / "charts" / "graphcred"
ACTIONLINT = ROOT / "scripts" / "actionlint.sh"
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def _jobs() -> dict[str, dict[str, Any]]:
    jobs: dict[str, dict[str, Any]] = _workflow()["jobs"]
    return jobs


def _step(job: str, *, uses: str | None = None, step_id: str | None = None) -> dict[str, Any]:
    for step in _jobs()[job]["steps"]:
        if (uses and step.get("uses", "").split("@")[0] == uses) or (step_id and step.get("id") == step_id):
            found: dict[str, Any] = step
            return found
    raise AssertionError(f"job {job} has no step {uses or step_id}")


def _version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A `run:` step as GitHub runs it with `shell: bash` (bash --noprofile --norc -eo pipefail {0})."""
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, check=False)


def test_runs_only_when_a_version_tag_is_pushed() -> None:
    workflow = _workflow()
    # PyYAML reads the bare key `on` as the boolean true (YAML 1.1)
    assert workflow[True] == {"push": {"tags": ["v*"]}}, "no branch, pull_request or fork can trigger a publish"
    assert workflow["defaults"]["run"]["shell"] == "bash", "bash -eo pipefail: a failing command in a pipe fails"
    assert _jobs()["version"]["if"] == "github.repository == 'graphcred/graphcred'"


def test_every_action_is_pinned_by_commit_sha_with_its_release_named() -> None:
    uses = [line.strip() for line in WORKFLOW.read_text().splitlines() if line.strip().startswith(("uses:", "- uses:"))]
    pinned = [re.fullmatch(r"(?:- )?uses: ([\w.-]+/[\w./-]+)@([0-9a-f]{40}) # (v\d+\.\d+\.\d+)", u) for u in uses]
    assert [u for u, m in zip(uses, pinned, strict=True) if m is None] == [], "a tag can be moved; a commit cannot"
    actions = {m.group(1) for m in pinned if m}
    assert actions == {"actions/checkout", "docker/setup-qemu-action", "docker/setup-buildx-action",
                       "docker/login-action", "docker/build-push-action", "azure/setup-helm",
                       "sigstore/cosign-installer"}
    # one action, one commit: two pins of the same action drifting apart would be an unreviewed upgrade
    commits: dict[str, set[str]] = {}
    for m in pinned:
        assert m is not None
        commits.setdefault(m.group(1), set()).add(m.group(2))
    assert {a: c for a, c in commits.items() if len(c) > 1} == {}


def test_each_job_has_only_the_permissions_it_uses() -> None:
    assert _workflow()["permissions"] == {}, "nothing by default"
    assert {name: job.get("permissions") for name, job in _jobs().items()} == {
        "version": {"contents": "read"},
        "image": {"contents": "read", "packages": "write"},
        "chart": {"contents": "read", "packages": "write"},
        # only the job that signs can mint an OIDC token, and it checks out no code
        "sign": {"packages": "write", "id-token": "write"},
    }
    assert all("checkout" not in step.get("uses", "") for step in _jobs()["sign"]["steps"])


def test_checkouts_keep_no_token_and_scripts_expand_no_expressions() -> None:
    for name, job in _jobs().items():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False, name
            # a tag name or an output pasted into a script is a script injection; env passes them as data
            assert "${{" not in step.get("run", ""), f"{name}: {step.get('name') or step.get('id')}"


def test_the_registry_token_reaches_only_the_logins() -> None:
    text = WORKFLOW.read_text()
    assert text.count("secrets.") == 3  # two docker/login-action steps and helm's login
    logins = [s for job in _jobs() for s in _jobs()[job]["steps"] if s.get("uses", "").startswith("docker/login")]
    assert [s["with"]["password"] for s in logins] == ["${{ secrets.GITHUB_TOKEN }}"] * 2
    assert len([job for job in _jobs() if any(s in logins for s in _jobs()[job]["steps"])]) == 2
    push = _step("chart", step_id="push")
    assert push["env"]["REGISTRY_PASSWORD"] == "${{ secrets.GITHUB_TOKEN }}"
    # on stdin, never on a command line (visible in the process list)
    assert 'printf \'%s\' "$REGISTRY_PASSWORD" | helm registry login ghcr.io' in push["run"]
    assert "--password-stdin" in push["run"] and "--password " not in push["run"]


def test_the_image_is_multi_arch_from_the_dockerfile_with_sbom_and_provenance() -> None:
    workflow, image = _workflow(), _jobs()["image"]
    assert workflow["env"]["PLATFORMS"] == "linux/amd64,linux/arm64"
    assert _step("image", uses="docker/setup-qemu-action")["with"]["platforms"] == "arm64"
    _step("image", uses="docker/setup-buildx-action")
    build = _step("image", uses="docker/build-push-action")
    assert build["id"] == "build"
    options = build["with"]
    assert options["platforms"] == "${{ env.PLATFORMS }}"
    assert (options["context"], options["file"], options["push"]) == (".", "Dockerfile", True)
    assert options["tags"] == "${{ env.IMAGE }}:${{ needs.version.outputs.version }}"
    assert options["sbom"] is True
    assert options["provenance"] == "mode=max"
    assert options["no-cache"] is True
    assert image["outputs"]["digest"] == "${{ steps.build.outputs.digest }}"


def test_the_base_image_is_pinned_by_the_digest_the_release_resolves() -> None:
    base, build = _step("image", step_id="base"), _step("image", uses="docker/build-push-action")
    assert build["with"]["build-args"].strip() == \
        "PYTHON_IMAGE=${{ steps.base.outputs.name }}@${{ steps.base.outputs.digest }}"
    labels = dict(line.split("=", 1) for line in build["with"]["labels"].strip().splitlines())
    assert labels["org.opencontainers.image.base.name"] == "${{ steps.base.outputs.name }}"
    assert labels["org.opencontainers.image.base.digest"] == "${{ steps.base.outputs.digest }}"
    assert labels["org.opencontainers.image.version"] == "${{ needs.version.outputs.version }}"
    assert 'docker buildx imagetools inspect "$base" --format \'{{ .Manifest.Digest }}\'' in base["run"]

    # The step reads the base from the Dockerfile (one source of truth): run its first line against the real one.
    first = base["run"].splitlines()[0]
    assert first.startswith("base=$(")
    found = _bash(f'{first}\nprintf %s "$base"', ROOT, {})
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert found.returncode == 0 and found.stdout == "python:3.11.13-slim-bookworm", found
    assert f"ARG PYTHON_IMAGE={found.stdout}\n" in dockerfile
    # the pin reaches every stage: each FROM is the build argument
    froms = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]


def test_signatures_are_made_by_digest_and_checked_against_the_workflow_identity() -> None:
    sign = _jobs()["sign"]
    assert sorted(sign["needs"]) == ["chart", "image"]
    assert _step("sign", uses="sigstore/cosign-installer")["with"]["cosign-release"] == "v3.0.6"
    step = next(s for s in sign["steps"] if "cosign sign" in s.get("run", ""))
    assert step["env"]["IMAGE_DIGEST"] == "${{ needs.image.outputs.digest }}"
    assert step["env"]["CHART_DIGEST"] == "${{ needs.chart.outputs.digest }}"
    assert step["env"]["ISSUER"] == "https://token.actions.githubusercontent.com"
    signed = re.findall(r"^cosign sign (.*)$", step["run"], re.MULTILINE)
    assert signed == ['--yes "$IMAGE@$IMAGE_DIGEST"', '--yes "$CHART_REPO/graphcred@$CHART_DIGEST"']
    assert 'identity="$GITHUB_SERVER_URL/$GITHUB_WORKFLOW_REF"' in step["run"]
    assert 'cosign verify "$ref" --certificate-identity "$identity" --certificate-oidc-issuer "$ISSUER"' in step["run"]
    # an empty output from an earlier job would sign "ghcr.io/...@": the step refuses it first
    guard = step["run"].split("cosign sign")[0]
    for digest, ok in (("sha256:" + "ab" * 32, True), ("", False), ("latest", False)):
        result = _bash(guard, ROOT, {"IMAGE_DIGEST": digest, "CHART_DIGEST": "sha256:" + "cd" * 32})
        assert (result.returncode == 0) is ok, (digest, result)


def test_the_chart_is_pushed_to_an_oci_registry_after_its_image() -> None:
    chart = _jobs()["chart"]
    assert _workflow()["env"]["CHART_REPO"] == "ghcr.io/graphcred/charts"
    assert chart["needs"] == ["version", "image"]
    assert chart["outputs"]["digest"] == "${{ steps.push.outputs.digest }}"
    run = _step("chart", step_id="push")["run"]
    assert "helm package charts/graphcred --destination dist" in run
    assert 'helm push "dist/graphcred-$VERSION.tgz" "oci://$CHART_REPO" 2>&1 | tee push.log' in run
    helm_version = re.search(r"^HELM_VERSION=(\S+)", (ROOT / "testbed" / "build-binaries.sh").read_text(), re.M)
    assert helm_version is not None
    assert _step("chart", uses="azure/setup-helm")["with"]["version"] == helm_version.group(1), \
        "the release packages with the helm the chart is tested with"


def test_the_charts_default_image_is_the_one_the_workflow_publishes(tmp_path: Path) -> None:
    version = _version()
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart_meta["version"], chart_meta["appVersion"]) == (version, version)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == _workflow()["env"]["IMAGE"] == "ghcr.io/graphcred/graphcred"
    assert values["image"]["tag"] == ""

    # Package as the chart job does, then render the package: the file it pushes installs IMAGE:<version>.
    helm = binary("helm")
    subprocess.run([helm, "package", str(CHART), "--destination", str(tmp_path)], check=True, capture_output=True)
    package = tmp_path / f"graphcred-{version}.tgz"
    with tarfile.open(package) as tar:
        assert "graphcred/values.yaml" in tar.getnames()
    # the bed's helm is built without release ldflags and assumes Kubernetes v1.20 when there is no cluster, which
    # the chart's kubeVersion refuses: render for the bed's apiserver, as tests/e2e/test_chart.py does
    kube = subprocess.run([binary("kube-apiserver"), "--version"], capture_output=True, text=True,
                          check=True).stdout.split()[-1]
    out = subprocess.run([helm, "template", "graphcred", str(package), "--namespace", "graphcred-system",
                          "--kube-version", kube], check=True, capture_output=True, text=True).stdout
    deployment = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert images == [f"ghcr.io/graphcred/graphcred:{version}"]


def test_the_version_check_accepts_only_the_version_of_this_tree(tmp_path: Path) -> None:
    script = _step("version", step_id="version")["run"]
    version = _version()

    def check(tag: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess[str], str]:
        output = tmp_path / f"output-{len(list(tmp_path.iterdir()))}"
        output.touch()
        return _bash(script, cwd, {"TAG": tag, "GITHUB_OUTPUT": str(output)}), output.read_text()

    ok, written = check(f"v{version}")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert written == f"version={version}\n"

    major, minor, patch = version.split(".")
    ahead, written = check(f"v{major}.{minor}.{int(patch) + 1}")
    assert ahead.returncode != 0 and written == ""
    for where in ("pyproject.toml version", "Chart.yaml version", "Chart.yaml appVersion"):
        assert f"{where} is '{version}'" in ahead.stdout

    not_semver, written = check("release-candidate")
    assert not_semver.returncode != 0 and written == ""
    assert "is not v<major>.<minor>.<patch>" in not_semver.stdout

    # A chart whose appVersion lags behind would install an image that was never pushed.
    tree = tmp_path / "tree"
    (tree / "charts" / "graphcred").mkdir(parents=True)
    (tree / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    lagging = (CHART / "Chart.yaml").read_text().replace(f'appVersion: "{version}"', 'appVersion: "0.0.9"')
    assert lagging != (CHART / "Chart.yaml").read_text()
    (tree / "charts" / "graphcred" / "Chart.yaml").write_text(lagging)
    stale, written = check(f"v{version}", tree)
    assert stale.returncode != 0 and written == ""
    assert "Chart.yaml appVersion is '0.0.9'" in stale.stdout
    assert "pyproject.toml version" not in stale.stdout


@pytest.fixture(scope="module")
def actionlint_ready() -> None:
    # builds actionlint on first use (cached like the test bed's binaries); `make lint` has normally done it
    subprocess.run(["bash", str(ACTIONLINT), "-version"], check=True, capture_output=True)


def test_actionlint_passes_the_workflow(actionlint_ready: None) -> None:
    result = subprocess.run(["bash", str(ACTIONLINT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_rejects_a_broken_workflow(actionlint_ready: None, tmp_path: Path) -> None:
    """The lint can fail: a misspelt job output (an empty digest at run time) is caught before any tag is pushed."""
    broken = tmp_path / "release.yaml"
    broken.write_text(WORKFLOW.read_text().replace("needs.image.outputs.digest", "needs.image.outputs.digets"))
    result = subprocess.run(["bash", str(ACTIONLINT), str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert 'property "digets" is not defined' in result.stdout
