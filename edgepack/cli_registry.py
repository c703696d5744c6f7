"""The registry and bundle-trust commands: `edgepack verify`, `publish`, `pull`, `ls`, `copy`.
Registered on the `edgepack` group by edgepack/cli.py."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import EdgepackError


def _default_pub() -> Path:
    from .cache import edgepack_home
    from .pipeline import DEFAULT_KEY

    return (edgepack_home() / DEFAULT_KEY).with_name("signing-key.pub.pem")


def _trust(key, cert_chain):
    """The public key (default: your own signing key's) or a CA certificate chain to verify with."""
    from .bundle.sigcheck import Trust

    if key and cert_chain:
        raise click.UsageError("give --key or --cert-chain, not both")
    return Trust(cert_chain=tuple(cert_chain)) if cert_chain else Trust(public_key=Path(key or _default_pub()))


_CERT_CHAIN = click.option("--cert-chain", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
                           help="CA certificate(s) (PEM) the signing certificate must chain to, instead of --key.")
_PLAIN_HTTP = click.option("--plain-http", is_flag=True, help="Talk HTTP, not HTTPS, to a non-loopback registry.")
_TIMEOUT = click.option("--timeout", type=float, metavar="SECONDS",
                        help="Overall deadline for the registry traffic (default 600, or $EDGEPACK_REGISTRY_TIMEOUT).")
_KEY = click.option("--key", type=click.Path(path_type=Path), help="Public key (PEM); default: your own signing key's.")


def _is_ref(arg: str) -> bool:
    """A registry reference rather than a bundle folder."""
    from .registry.refs import parse_ref

    if arg.startswith("layout:"):
        return True
    if Path(arg).exists():
        return False
    try:
        parse_ref(arg)
        return True
    except EdgepackError:
        return False


@click.command()
@click.argument("bundle")
@click.option("--key", type=click.Path(path_type=Path), help="Public key (PEM); default: your own signing key's.")
@_CERT_CHAIN
@_PLAIN_HTTP
@_TIMEOUT
def verify(bundle, key, cert_chain, plain_http, timeout):
    """Check a bundle folder, or a registry artifact (REF) without downloading its files.

    \b
    Example:
      edgepack verify dist/digits-1.0.0 --key keys/signing-key.pub.pem
      edgepack verify localhost:5000/digits:1.0.0 --plain-http"""
    if _is_ref(bundle):
        from .registry import verify as verify_ref

        info = verify_ref(bundle, _trust(key, cert_chain), plain_http=plain_http, timeout=timeout)
        click.echo(f"OK: {info['ref']} {info['digest']} ({info['layers_checked']} layer digests match the signature; "
                   f"targets {', '.join(info['targets'])}; signer {info.get('signer_fingerprint') or 'certificate'})")
        return
    from .bundle.sign import verify_bundle

    if key and cert_chain:
        raise click.UsageError("give --key or --cert-chain, not both")
    info = verify_bundle(Path(bundle), None if cert_chain else (key or _default_pub()), cert_chain=cert_chain)
    click.echo(f"OK: {bundle} ({info.get('files_checked', '?')} files, signer {info.get('signer_fingerprint', '')})")


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False, path_type=Path))
@click.argument("ref")
@_KEY
@_CERT_CHAIN
@click.option("--force", is_flag=True, help="Move the tag even if it holds other content (release tags are immutable).")
@_PLAIN_HTTP
@_TIMEOUT
def publish(bundle, ref, key, cert_chain, force, plain_http, timeout):
    """Publish a signed bundle to a registry: layout:PATH:TAG or HOST[:PORT]/REPO:TAG (docs/registry.md).

    The bundle's digests and signature are verified before anything is uploaded.

    \b
    Example:
      edgepack publish dist/digits-1.0.0 registry.example.com/models/digits:1.0.0"""
    from .console import transfer
    from .registry import push
    from .registry.refs import parse_ref

    with transfer("publish"):  # upload bars on a terminal
        info = push(bundle, parse_ref(ref), plain_http=plain_http, trust=_trust(key, cert_chain), force=force, timeout=timeout)
    click.echo(f"published {info.get('ref', ref)} {info.get('digest', '')}")


@click.command()
@click.argument("ref")
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Where to put the bundle.")
@click.option("--key", type=click.Path(path_type=Path), help="Public key (PEM); default: your own signing key's.")
@_CERT_CHAIN
@click.option("--device", type=click.Path(path_type=Path), help="Device profile: pull only the best target validated on it.")
@click.option("--target", help="Pull only this target.")
@click.option("--force", is_flag=True, help="Replace -o DIR even if it holds files edgepack did not write.")
@_PLAIN_HTTP
@_TIMEOUT
def pull(ref, output, key, cert_chain, device, target, force, plain_http, timeout):
    """Fetch a bundle, re-hash every blob, verify the signature, then move it into place.

    \b
    Example:
      edgepack pull layout:registry/digits:1.0.0 -o digits --device devices/pi4.yaml"""
    from .registry import pull as do_pull
    from .registry.refs import parse_ref

    profile = None
    if device:
        from .devices import load_profile

        profile = load_profile(str(device))[0]
    trust = _trust(key, cert_chain)
    if profile is None and target is None and not cert_chain:
        trust = trust.public_key  # a whole-bundle pull from a layout keeps layout.pull's path
    from .console import transfer

    with transfer("pull"):  # download bars on a terminal
        info = do_pull(parse_ref(ref), output, trust, device=profile, target=target, plain_http=plain_http, force=force,
                       timeout=timeout)
    what = f"target {', '.join(info['targets'])}" if info.get("partial") else f"{info.get('files_checked', '?')} files"
    click.echo(f"pulled {ref} -> {output} (verified, {what})")


@click.command("ls")
@click.argument("ref")
@_PLAIN_HTTP
@_TIMEOUT
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON on stdout.")
def ls(ref, plain_http, timeout, as_json):
    """List a registry's tags (or one tag) with targets, sizes and validation status.

    \b
    Example:
      edgepack ls layout:registry/digits"""
    from .registry.remote import list_tags  # works on layout and remote references

    rows = list_tags(ref, plain_http=plain_http, timeout=timeout)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['tag']}  {r.get('digest', '')}  {r.get('size', 0)} bytes  {'signed' if r.get('signed', True) else 'UNSIGNED'}")
        for t in r.get("targets") or []:
            t = t if isinstance(t, dict) else {"target": t}
            ok = ", ".join(t.get("validated_on") or []) or "-"
            click.echo(f"  {t.get('target')}  {t.get('precision') or ''}  {t.get('runtime') or ''}  {t.get('size', '')}  validated on: {ok}")


@click.command()
@click.argument("src")
@click.argument("dst")
@_KEY
@_CERT_CHAIN
@click.option("--force", is_flag=True, help="Move the destination tag even if it holds other content.")
@_PLAIN_HTTP
@_TIMEOUT
def copy(src, dst, key, cert_chain, force, plain_http, timeout):
    """Copy a bundle between a layout and a remote registry (or two of either), digests preserved.

    The source is verified (signature, every layer digest) before anything is uploaded.

    \b
    Example:
      edgepack copy layout:registry/digits:1.0.0 registry.example.com/models/digits:1.0.0"""
    from .console import transfer
    from .registry import copy as do_copy

    with transfer("copy"):
        info = do_copy(src, dst, _trust(key, cert_chain), plain_http=plain_http, force=force, timeout=timeout)
    click.echo(f"copied {info['src']} -> {info['dst']} {info['digest']} ({info['blobs_copied']} blobs sent)")
