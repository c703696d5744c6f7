"""Company PKI: a build signs with a key and its X.509 certificate; verify and pull trust a CA chain."""

import json

from conftest import make_pki, run_cli


def test_build_signed_with_a_certificate_verifies_against_the_ca_only(tiny_recipe, tmp_path, edgepack_home):
    acme = make_pki(tmp_path / "pki", "acme")
    other = make_pki(tmp_path / "pki", "other")
    text = tiny_recipe.read_text() + (
        f"package:\n  key: {acme['key']}\n  certificate: {acme['leaf']}\n  certificate_chain: [{acme['ca']}]\n"
    )
    tiny_recipe.write_text(text)
    out = tmp_path / "bundle"
    res = run_cli("build", tiny_recipe, "-o", out, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    sig = json.loads((out / "signatures" / "model.sig").read_text())
    assert "certificate" in json.dumps(sig["verificationMaterial"])  # the signature carries the certificate

    ok = run_cli("verify", out, "--cert-chain", acme["ca"])
    assert ok.returncode == 0, ok.stderr
    wrong = run_cli("verify", out, "--cert-chain", other["ca"])
    assert wrong.returncode == 4 and "not verified with certificate chain" in wrong.stderr

    (out / "report.json").write_text("{}")
    tampered = run_cli("verify", out, "--cert-chain", acme["ca"])
    assert tampered.returncode == 4 and "report.json" in tampered.stderr

    pulled = tmp_path / "pulled"
    ref = f"layout:{edgepack_home / 'registry' / 'tiny'}:0.1.0"
    res = run_cli("pull", ref, "-o", pulled, "--cert-chain", acme["ca"])
    assert res.returncode == 0, res.stderr
    assert run_cli("pull", ref, "-o", tmp_path / "p2", "--cert-chain", other["ca"]).returncode == 4
    assert not (tmp_path / "p2").exists()


def test_certificate_chain_without_certificate_is_a_recipe_error(tiny_recipe, tmp_path):
    tiny_recipe.write_text(tiny_recipe.read_text() + "package:\n  certificate_chain: [ca.pem]\n")
    res = run_cli("build", tiny_recipe, cwd=tmp_path)
    assert res.returncode == 2 and "package" in res.stderr and "needs 'certificate'" in res.stderr
