"""A built bundle's report.html in a real headless Chromium, its MODEL_CARD.md, and the card's OCI annotations
on a real registry. One small build (ONNX source, two ONNX Runtime targets) shared by the module."""

import html
import json
import re
import shutil

import chromium
import pytest
import yaml
from conftest import TINY_RECIPE, make_tiny_recipe, run_cli

CARD = """\
card:
  summary: 'Classifies 8x8 digits <script>alert("card")</script> & more.'
  intended_use: Sorting scanned digits in the demo.
  limitations: Random weights; not for production.
  training_data: scikit-learn digits.
  license: apache-2.0
  authors: [Edge Team]
"""

PROBE = """<script>
const plots = [...document.querySelectorAll('svg.plot')].map(s => {
  const r = s.getBoundingClientRect();
  const marks = [...s.querySelectorAll('.mark')].map(m => { const b = m.getBoundingClientRect(); return [b.width, b.height]; });
  return {id: s.id, w: r.width, h: r.height, marks: marks};
});
const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(plots);
document.body.appendChild(pre);
</script>"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    text = TINY_RECIPE.replace("    name: ort\n", "    name: ort\n  - type: onnxruntime\n    name: ort-fp32\n    input: fp32\n")
    recipe = make_tiny_recipe(d / "tiny", text + CARD)
    env = {"EDGEPACK_HOME": str(d / "home")}
    res = run_cli("build", recipe, "-o", d / "bundle", "--no-publish", cwd=d, env=env)
    assert res.returncode == 0, res.stderr
    return d / "bundle", env, d


def test_report_files_are_signed_bundle_files(built):
    bundle, env, d = built
    manifest = json.loads((bundle / "edgepack.json").read_text())
    assert {"report.json", "report.html", "timings.json", "MODEL_CARD.md"} <= {f["path"] for f in manifest["files"]}
    report = json.loads((bundle / "report.json").read_text())
    assert list(report)[0] == "summary" and "samples_ms" not in json.dumps(report)
    timings = json.loads((bundle / "timings.json").read_text())
    for tid in ("ort", "ort-fp32"):
        dev = report["targets"][tid]["devices"]["local"]
        assert len(timings["targets"][tid]["local"]["samples_ms"]) == dev["latency"]["count"] > 0
        assert report["summary"]["targets"][tid]["model_bytes"] == report["targets"][tid]["size"]["model_bytes"] > 0
    assert report["summary"]["best_per_device"]["local"]["target"] in ("ort", "ort-fp32")
    cmp = run_cli("bench", "--compare", bundle / "report.json", bundle / "report.json", "--json", env=env)  # still reads it
    assert cmp.returncode == 0 and {r["target"] for r in json.loads(cmp.stdout)["rows"]} == {"ort", "ort-fp32"}, cmp.stderr
    pub = d / "pub.pem"
    shutil.copyfile(d / "home" / "keys" / "signing-key.pub.pem", pub)
    assert run_cli("verify", bundle, "--key", pub, env=env).returncode == 0
    tampered = d / "tampered"
    shutil.copytree(bundle, tampered)
    page = tampered / "report.html"
    page.write_text(page.read_text().replace("Summary", "Summery"))
    res = run_cli("verify", tampered, "--key", pub, env=env)
    assert res.returncode == 4 and "report.html" in res.stderr, res.stderr


def test_model_card_in_the_bundle(built):
    bundle, _, _ = built
    _, fm, body = (bundle / "MODEL_CARD.md").read_text().split("---\n", 2)
    meta = yaml.safe_load(fm)
    report = json.loads((bundle / "report.json").read_text())
    assert meta["name"] == "tiny" and meta["version"] == "0.1.0" and meta["license"] == "apache-2.0"
    assert meta["source_digest"] == "sha256:" + report["source"]["sha256"] and meta["authors"] == ["Edge Team"]
    assert [t["id"] for t in meta["targets"]] == ["ort", "ort-fp32"] and all(t["validated_on"] == ["local"] for t in meta["targets"])
    assert {m["target"] for m in meta["metrics"]} == {"ort", "ort-fp32"} and meta["metrics"][0]["name"] == "top1"
    for text in ("## Intended use\n\nSorting scanned digits", "## Limitations\n\nRandom weights", "## Training data\n\nscikit-learn",
                 "## Gates", "min_cosine", "## Toolchain", "- onnxruntime: "):
        assert text in body


def test_report_html_in_headless_chromium(built, tmp_path):
    if chromium.skip_reason():
        pytest.skip(chromium.skip_reason())
    bundle, _, _ = built
    page = (bundle / "report.html").read_text()
    assert "<script" not in page and "alert(&quot;card&quot;)" in page  # the card's text is escaped, not run
    # 1. the page as shipped: loads with no console message, its screenshot is not blank
    shot = tmp_path / "shot.png"
    res = chromium.screenshot((bundle / "report.html").as_uri(), shot, height=2600)
    assert res.returncode == 0 and shot.stat().st_size > 0, res.stderr[-2000:]
    assert chromium.console_messages(res.stderr) == []
    from PIL import Image

    img = Image.open(shot).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20)
    white = max(n for n, _ in colors)
    assert img.size == (1200, 2600) and len(colors) > 50 and white < 0.97 * img.size[0] * img.size[1]
    # 2. a copy with a probe script (the CSP allows inline script only there): every plot and mark has a size
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("script-src 'none'", "script-src 'unsafe-inline'").replace("</body>", PROBE + "</body>"))
    res = chromium.dump_dom(probe.as_uri())
    assert res.returncode == 0 and chromium.console_messages(res.stderr) == [], res.stderr[-2000:]
    plots = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S).group(1)))
    assert [p["id"] for p in plots] == ["plot-latency", "plot-pareto"]
    for p in plots:
        assert p["w"] > 100 and p["h"] > 50 and len(p["marks"]) == 2, p  # one per (target, device)
        assert all(w > 0 and h > 0 for w, h in p["marks"]), p
    # 3. the console check itself sees an error, and the page's CSP blocks (and logs) any fetch
    bad = tmp_path / "bad.html"
    bad.write_text(page.replace("script-src 'none'", "script-src 'unsafe-inline'").replace(
        "</body>", "<script>console.error('edgepack-probe-error')</script><img src=\"http://127.0.0.1:9/x.png\"></body>"))
    logged = chromium.console_messages(chromium.dump_dom(bad.as_uri()).stderr)
    assert any("edgepack-probe-error" in m for m in logged) and any("Content Security Policy" in m for m in logged), logged

@pytest.mark.registry
def test_card_summary_in_the_oci_annotations_on_a_real_registry(built, tmp_path):
    from registry_server import RegistryServer, available

    if available():
        pytest.skip(available())
    from edgepack import registry
    from edgepack.registry.http import RemoteStore

    bundle, _, _ = built
    with RegistryServer(tmp_path / "registry") as reg:
        registry.push(bundle, f"{reg.host}/team/tiny:0.1.0")
        index = json.loads(RemoteStore(reg.host, "team/tiny").get_manifest("0.1.0")[0])
        ann = index["annotations"]
        assert ann["org.opencontainers.image.description"] == 'Classifies 8x8 digits <script>alert("card")</script> & more.'
        assert ann["org.opencontainers.image.licenses"] == "apache-2.0" and ann["org.opencontainers.image.authors"] == "Edge Team"
        assert ann["org.opencontainers.image.version"] == "0.1.0" and ann["dev.edgepack.primary-metric"] == "top1"
        assert json.loads(ann["dev.edgepack.best-per-device"])["local"]["target"] in ("ort", "ort-fp32")
        man = json.loads(RemoteStore(reg.host, "team/tiny").get_manifest(index["manifests"][0]["digest"])[0])
        assert man["annotations"]["org.opencontainers.image.licenses"] == "apache-2.0"
        assert "MODEL_CARD.md" in [x["annotations"]["org.opencontainers.image.title"] for x in man["layers"]]
