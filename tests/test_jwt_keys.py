"""JWT signing keys as an attacker who stole their material would use them (issue 11, item 2).

Each token here is forged with PyJWT and the real key bytes of the home's keyring (what a leak
of the keyring and the master key hands over), never built by our own ``issue_token``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import tempfile
import time
from pathlib import Path

import jwt as pyjwt
import pytest
from sqlalchemy import text

from bizosctl.security.jwt import InvalidToken

TEN_YEARS = 10 * 365 * 86400
ROTATED: list[float] = []  # (before, after) the module home's jwt rotation


@pytest.fixture(scope="module")
def home():
    """One home for the forging tests (they change nothing): jwt v1 demoted by a rotation, v2
    primary, v3 staged."""
    from bizosctl.catalog.control import get_control, reset_controls
    from bizosctl.config import reset_settings
    from bizosctl.security.secrets import rotate_jwt
    from bizosctl.tenancy.regions import init_home, stop_embedded

    path = Path(tempfile.mkdtemp(prefix="bzj", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BIZOS_HOME", str(path))
        reset_settings()
        ctl = get_control()
        init_home(ctl)
        _ = ctl.keyring
        ROTATED.append(time.time())
        rotate_jwt(ctl)
        ROTATED.append(time.time())
        ctl.reload_keyring()
        yield ctl
        stop_embedded(ctl)
    reset_settings()
    reset_controls()
    shutil.rmtree(path, ignore_errors=True)


def key_of(ctl, version: int) -> bytes:
    """The stolen key bytes of jwt ``version`` (unwrapped with the master key)."""
    from sqlalchemy import select

    from bizosctl.catalog.models import KeyringEntry
    from bizosctl.security.keyring import unwrap

    with ctl.catalog() as s:
        entry = s.execute(
            select(KeyringEntry).where(
                KeyringEntry.purpose == "jwt", KeyringEntry.version == version
            )
        ).scalar_one()
        return unwrap(ctl.keyring.master, entry)


def forge(key: bytes, kid: object, **claims: object) -> str:
    """A token signed with a stolen ``jwt`` seed (the Ed25519 private key it makes)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    now = int(time.time())
    payload = {"sub": "admin", "tenant": "victim", "iat": now, "exp": now + 60}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    private = Ed25519PrivateKey.from_private_bytes(key)
    if isinstance(kid, str):
        return pyjwt.encode(payload, private, algorithm="EdDSA", headers={"kid": kid})

    # PyJWT will not put a non-string kid in a header: by hand, as an attacker would
    signing = part({"alg": "EdDSA", "typ": "JWT", "kid": kid}) + "." + part(payload)
    return signing + "." + b64(private.sign(signing.encode()))


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def part(doc: object) -> str:
    return b64(json.dumps(doc).encode())


def verifier():
    """Another API process of the same home (its own keyring), with no clock leeway."""
    from bizosctl.catalog.control import Control
    from bizosctl.config import Settings

    return Control(Settings(jwt_leeway_seconds=0))


def test_a_genuine_token_verifies(home):
    from bizosctl.security.jwt import issue_token, verify_token

    claims = verify_token(verifier(), issue_token(home, subject="u1", tenant="acme"))
    assert (claims["sub"], claims["tenant"]) == ("u1", "acme")
    # and one forged with the primary's key and every rule kept is indistinguishable
    assert verify_token(home, forge(key_of(home, 2), "jwt-v2"))["sub"] == "admin"


def test_token_living_ten_years_is_refused(home):
    from bizosctl.security.jwt import verify_token

    now = int(time.time())
    token = forge(key_of(home, 2), "jwt-v2", iat=now, exp=now + TEN_YEARS)
    with pytest.raises(InvalidToken, match="lifetime"):
        verify_token(home, token)


@pytest.mark.parametrize("claim", ["sub", "tenant", "iat", "exp"])
def test_token_missing_a_claim_is_refused(home, claim):
    from bizosctl.security.jwt import verify_token

    token = forge(key_of(home, 2), "jwt-v2", **{claim: None})
    with pytest.raises(InvalidToken):
        verify_token(home, token)


@pytest.mark.parametrize(
    ("kid", "version"),
    [
        ("jwt-v" + "9" * 5000, 2),  # int() of 5,000 digits raised ValueError, not InvalidToken
        ("jwt-v\u0661", 1),  # ARABIC-INDIC DIGIT ONE: str.isdigit() and int() accept it
        ("jwt-v\uff12", 2),  # FULLWIDTH DIGIT TWO
        ("jwt-v0003", 3),  # leading zeros name v3 a second way
        ("jwt-v2\n", 2),
        (2, 2),  # not a string
        ("", 2),
    ],
    ids=["5000-digits", "arabic-indic", "fullwidth", "leading-zeros", "newline", "int", "empty"],
)
def test_token_with_a_malformed_kid_is_refused(home, kid, version):
    from bizosctl.security.jwt import verify_token

    token = forge(key_of(home, version), kid)
    message = "names no known signing key" if isinstance(kid, str) else "invalid token"
    with pytest.raises(InvalidToken, match=message):
        verify_token(home, token)


def test_token_from_the_future_is_refused(home):
    from bizosctl.security.jwt import verify_token

    now = int(time.time())
    token = forge(key_of(home, 2), "jwt-v2", iat=now + 3600, exp=now + 3660)
    with pytest.raises(InvalidToken, match="issued in the future"):
        verify_token(home, token)


@pytest.mark.parametrize(
    "bad",
    ["", "a.b", "x" * 10_000, "a.b.c.d", "\u0661.\u0662.\u0663"],
    ids=["empty", "two-parts", "huge", "four-parts", "unicode"],
)
def test_garbage_is_invalid_token(home, bad):
    from bizosctl.security.jwt import verify_token

    with pytest.raises(InvalidToken):
        verify_token(home, bad)


def test_demoted_key_does_not_sign_new_tokens(home):
    """v1 stopped signing at the rotation: a token it signed later is forged, although v1
    still verifies the tokens it signed before (until ``retire_after``)."""
    from bizosctl.security.jwt import verify_token

    before, stopped = ROTATED
    before = int(before) - 1
    genuine = forge(key_of(home, 1), "jwt-v1", iat=before, exp=before + 600)
    assert verify_token(verifier(), genuine)["sub"] == "admin"
    # wait (on the clock, with a deadline) until a token signed "now" is after the switch
    # plus the reload period in which stale processes may still sign with v1
    deadline = time.monotonic() + 30
    while int(time.time()) <= float(stopped) + home.settings.keyring_reload_seconds + 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(InvalidToken, match="stopped signing"):
        verify_token(verifier(), forge(key_of(home, 1), "jwt-v1"))


def test_issue_token_refuses_reserved_claims_and_a_longer_lifetime(home):
    from bizosctl.errors import InvalidInput
    from bizosctl.security.jwt import issue_token

    with pytest.raises(InvalidInput, match="reserved"):
        issue_token(home, subject="u", tenant="t", claims={"exp": 2**40})
    with pytest.raises(InvalidInput, match="BIZOS_JWT_TTL_SECONDS"):
        issue_token(home, subject="u", tenant="t", ttl_seconds=TEN_YEARS)


def _public_bytes(ctl, version: int) -> bytes:
    from bizosctl.security.jwt import jwks

    (jwk,) = [k for k in jwks(ctl)["keys"] if k["kid"] == f"jwt-v{version}"]
    return base64.urlsafe_b64decode(jwk["x"] + "==")


def test_alg_none_is_refused(home):
    now = int(time.time())
    claims = {"sub": "admin", "tenant": "victim", "iat": now, "exp": now + 60}
    unsigned = part({"alg": "none", "typ": "JWT", "kid": "jwt-v2"}) + "." + part(claims) + "."
    with pytest.raises(InvalidToken, match="not signed with EdDSA"):
        verify_token_of(home, unsigned)


def test_hs256_signed_with_the_published_public_key_is_refused(home):
    """Algorithm confusion: the public key (anyone can read it at the JWKS URL) used as an
    HMAC secret."""
    now = int(time.time())
    claims = {"sub": "admin", "tenant": "victim", "iat": now, "exp": now + 60}
    public = _public_bytes(home, 2)
    signing = part({"alg": "HS256", "typ": "JWT", "kid": "jwt-v2"}) + "." + part(claims)
    mac = hmac.new(public, signing.encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken, match="not signed with EdDSA"):
        verify_token_of(home, signing + "." + b64(mac))
    # PyJWT's own HS256 with the seed (the pre-EdDSA scheme) is refused too
    forged = pyjwt.encode(claims, key_of(home, 2), algorithm="HS256", headers={"kid": "jwt-v2"})
    with pytest.raises(InvalidToken, match="not signed with EdDSA"):
        verify_token_of(home, forged)


def test_token_signed_by_another_key_pair_is_refused(home):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = Ed25519PrivateKey.generate().private_bytes_raw()
    with pytest.raises(InvalidToken, match="invalid token"):
        verify_token_of(home, forge(other, "jwt-v2"))


def test_jwks_lists_every_live_key_and_a_standard_client_verifies(home):
    """PyJWT's JWK parsing (what a JWKS client does with the document) verifies our tokens;
    the staged key is published before it signs; no private part is published."""
    from bizosctl.security.jwt import issue_token, jwks

    doc = jwks(home)
    kids = [k["kid"] for k in doc["keys"]]
    assert kids == ["jwt-v1", "jwt-v2", "jwt-v3"]  # demoted, primary, staged
    assert all(set(k) == {"kty", "crv", "x", "kid", "alg", "use"} for k in doc["keys"])
    token = issue_token(home, subject="u1", tenant="acme")
    keyset = pyjwt.PyJWKSet.from_dict(doc)
    signing = keyset[pyjwt.get_unverified_header(token)["kid"]]
    claims = pyjwt.decode(token, signing.key, algorithms=["EdDSA"])
    assert claims["sub"] == "u1"


def verify_token_of(ctl, token):
    from bizosctl.security.jwt import verify_token

    return verify_token(ctl, token)


def test_invalid_token_is_in_the_error_hierarchy():
    from bizosctl import errors
    from bizosctl.security import jwt

    assert jwt.InvalidToken is errors.InvalidToken
    assert issubclass(errors.InvalidToken, errors.Unauthorized)
    assert errors.InvalidToken.http_status == 401


# -- retirement without a rotation ------------------------------------------------------------
@pytest.fixture
def fresh(initialised_home, cli):
    from bizosctl.catalog.control import get_control

    ctl = get_control()
    assert cli("secrets", "rotate", "jwt").exit_code == 0
    ctl.reload_keyring()
    return ctl


def keyring_rows(ctl, purpose="jwt"):
    from bizosctl.db.engines import get_engine

    # a real connection to the catalog, not the ORM of the code under test
    with get_engine(ctl.home_cluster.url("bizos_control"), pooled=False).connect() as c:
        return {
            r.version: r
            for r in c.execute(
                text(
                    "select version, retired_at, wrapped_key, to_jsonb(keyring) ? 'destroyed_at' "
                    "as has_destroyed, (to_jsonb(keyring) ->> 'destroyed_at') as destroyed_at "
                    "from keyring where purpose = :p"
                ),
                {"p": purpose},
            )
        }


def past_retire_after(ctl, version=1, seconds=-1):
    """Move v1's ``retire_after`` (when its last token expires) to ``seconds`` from now."""
    with ctl.catalog() as s:
        return s.execute(
            text(
                "update keyring set retire_after = now() + make_interval(secs => :s) "
                "where purpose = 'jwt' and version = :v returning extract(epoch from retire_after)"
            ),
            {"v": version, "s": seconds},
        ).scalar_one()


def test_key_past_retire_after_stops_verifying_without_a_rotation(fresh):
    """Nobody ran a rotation or a cron job since v1's last token expired: a process that
    loaded the keyring before refuses v1 by its date, and one that loads it retires v1."""
    from bizosctl.catalog.control import Control
    from bizosctl.config import Settings
    from bizosctl.security.jwt import verify_token

    stolen = key_of(fresh, 1)
    until = float(past_retire_after(fresh, seconds=1))
    before = Control(Settings(jwt_leeway_seconds=0, keyring_reload_seconds=3600))
    _ = before.keyring  # loaded while v1 still verifies, and never reloaded
    deadline = time.monotonic() + 30
    while time.time() <= until:  # wait on the clock, with a deadline
        assert time.monotonic() < deadline
        time.sleep(0.05)
    token = forge(stolen, "jwt-v1", iat=int(time.time()) - 600, exp=int(time.time()) + 60)
    with pytest.raises(InvalidToken, match="retired"):
        verify_token(before, token)  # refused by its retire_after, without a reload
    assert keyring_rows(fresh)[1].retired_at is None  # nobody has retired it yet
    with pytest.raises(InvalidToken, match="retired"):
        verify_token(verifier(), token)  # a process that loads the keyring now: retired
    assert keyring_rows(fresh)[1].retired_at is not None


def test_retire_due_command(fresh, cli):
    past_retire_after(fresh)
    r = cli("secrets", "retire-due", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["dry_run"] is True
    assert {"purpose": "jwt", "version": 1} in doc["retire"]
    assert keyring_rows(fresh)[1].retired_at is None  # the dry run changed nothing
    r = cli("secrets", "retire-due", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {"purpose": "jwt", "version": 1} in doc["retire"]
    # a JWT key is destroyed once retired: no token it signed can still be valid
    assert {"purpose": "jwt", "version": 1} in doc["destroy"]
    row = keyring_rows(fresh)[1]
    assert row.retired_at is not None and row.wrapped_key is None and row.destroyed_at
    r = cli("secrets", "retire-due")
    assert r.exit_code == 0 and "nothing due" in r.stdout


def test_fresh_key_after_a_leak_retires_the_leaked_key_at_once(fresh, cli):
    from bizosctl.security.jwt import issue_token, verify_token

    # v2 signs now; the attacker holds its bytes
    fresh.reload_keyring()
    leaked = key_of(fresh, 2)
    genuine = issue_token(fresh, subject="u", tenant="acme")
    r = cli("secrets", "rotate", "jwt", "--fresh-key", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kid"] == "jwt-v4" and 2 in doc["retired"]
    for token in (genuine, forge(leaked, "jwt-v2")):
        with pytest.raises(InvalidToken, match="retired"):
            verify_token(verifier(), token)
    states = {
        v["version"]: v["state"]
        for p in json.loads(cli("secrets", "list", "--json").stdout)["purposes"]
        if p["purpose"] == "jwt"
        for v in p["versions"]
    }
    assert states == {1: "destroyed", 2: "destroyed", 3: "destroyed", 4: "primary", 5: "staged"}
    assert verify_token(verifier(), issue_token(fresh, subject="u", tenant="acme"))["sub"] == "u"
