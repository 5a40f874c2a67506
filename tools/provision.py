"""`fedge provision`: identities and broker credentials for devices and the coordinator.

    fedge provision ca --out ca/
    fedge provision broker --out etc/ [--shards K] [--ca-dir ca/ --host broker.lan --host 10.0.0.5]
    fedge provision ejabberd --out etc/ [--shards K]
    fedge provision device --id pi-007 --passwd-file etc/passwd --out creds [--url mqtts://broker.lan:8884 --ca-dir ca/]
    fedge provision device --id pi-007 --cert --ca-dir ca/ --out creds/ [--url mqtts://broker.lan:8883]
    fedge provision coordinator --passwd-file etc/passwd --out creds/ [--shards K]
    fedge provision identity --id pi-007 --out creds/ --directory etc/identities.json

A device's broker username is its id: the ACL (tools/broker/files/fedge.acl) lets user `d`
use only the topics fedge/v1/devices/d/..., and with a certificate the CN is that username.
A sharded fleet's worker k logs in as fedge-shard-k (tools/broker/shard_users.py): `--shards K`
gives `broker` the workers' ACL blocks and `coordinator` their credentials, next to its own,
and `ejabberd` (a cluster's ejabberd.yml, hardware/ejabberd) the devices' grants on the K shard topics.
Each identity gets `<id>.toml`, a [broker] table for the device or coordinator config:
    url, username, password            (password identities)
    url, ca_file, cert_file, key_file  (certificate identities; the CN is the username)
    ca_file                            (also for a password identity on an mqtts:// url)
Private files (keys, credentials, the password file) are written mode 0600.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
from pathlib import Path

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import MAX_SHARDS, device_topic
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.models.output_dir import dangling_link, refuse_file_as_folder
from fedge.tools.broker.config import ACL_NAME, COORDINATOR_USER, SHIPPED, shipped_text
from fedge.tools.broker.ejabberd_shards import ejabberd_config
from fedge.tools.broker.errors import ReservedUsername
from fedge.tools.broker.foreign import refuse_foreign
from fedge.tools.broker.passwd import BROKER_USER, generate_password, upsert_password, write_private_file
from fedge.tools.broker.shard_users import SHARD_USER_PREFIX, is_shard_user, shard_acl, shard_users
from fedge.tools.cli_args import int_in, path_arg

MAX_ID_LEN = 64  # an X.509 Common Name holds at most 64 characters
DEV_URL = "mqtt://127.0.0.1:1883"  # mosquitto-dev.conf
PROD_PASSWORD_URL = "mqtts://localhost:8884"  # mosquitto-prod.conf, password listener
PROD_CERT_URL = "mqtts://localhost:8883"  # mosquitto-prod.conf, client-certificate listener


def validate_device_id(device_id: str) -> str:
    """`device_id` if it can be a topic level, a broker username and a certificate CN."""
    try:
        device_topic(device_id, "update")  # the protocol's rule: non-empty, no / + # NUL
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if device_id == COORDINATOR_USER:
        raise ReservedUsername(f"{COORDINATOR_USER!r} is the coordinator's broker user; pick another device id")
    if device_id.startswith(SHARD_USER_PREFIX):  # the ACL would give it a worker's rights, the broker its session
        raise ReservedUsername(f"{device_id!r}: ids starting {SHARD_USER_PREFIX!r} are the shard workers' broker "
                               "users; pick another device id")
    if len(device_id) > MAX_ID_LEN or any(c == ":" or c.isspace() or not c.isprintable() for c in device_id):
        raise ConfigError(f"invalid device id {device_id!r}: at most {MAX_ID_LEN} printable characters, "
                          "no spaces and no ':'")
    return device_id


# -- certificates (cryptography is imported only when one is asked for) ---------------------

def create_ca(directory: str | Path, *, name: str = "fedge CA", overwrite: bool = False):
    """A new CA in `directory` (ca.crt, ca.key); returns its CertFiles."""
    from fedge.tools.broker.certs import create_ca as _create_ca

    return _create_ca(directory, name=name, overwrite=overwrite)


def load_ca(directory: str | Path):
    from fedge.tools.broker.certs import CertFiles

    ca = CertFiles(Path(directory) / "ca.crt", Path(directory) / "ca.key")
    if not (ca.cert.exists() and ca.key.exists()):
        raise ConfigError(f"no CA in {directory} (expected ca.crt and ca.key; make one with `fedge provision ca`)")
    return ca


def issue_server_cert(ca, hosts, directory: str | Path, *, overwrite: bool = False):
    """The broker's certificate (server.crt, server.key) for `hosts` (names and IPs)."""
    from fedge.tools.broker.certs import issue_server_cert as _issue

    return _issue(ca, list(hosts), directory, overwrite=overwrite)


def issue_device_cert(ca, device_id: str, directory: str | Path, *, overwrite: bool = False):
    """A client certificate with CN = `device_id`, which Mosquitto then uses as the username."""
    from fedge.tools.broker.certs import issue_client_cert

    return issue_client_cert(ca, validate_device_id(device_id), directory, overwrite=overwrite)


def issue_coordinator_cert(ca, directory: str | Path, *, overwrite: bool = False, username: str = COORDINATOR_USER):
    """A client certificate for a coordinator process: the leader, or a shard worker (fedge-shard-k)."""
    from fedge.tools.broker.certs import issue_client_cert

    if username != COORDINATOR_USER and not is_shard_user(username):
        raise ConfigError(f"{username!r} is not a coordinator process's broker user")
    return issue_client_cert(ca, username, directory, overwrite=overwrite)


# -- identities ----------------------------------------------------------------------------

def provision_password(username: str, passwd_file: str | Path, out_dir: str | Path, *, url: str = DEV_URL,
                       ca_file: str | None = None, password: str | None = None, overwrite: bool = False) -> Path:
    """Give `username` a random password in `passwd_file`; write `<username>.toml` to `out_dir`."""
    creds = _creds_path(out_dir, username, overwrite)
    password = password or generate_password()
    upsert_password(passwd_file, username, password)
    table = {"url": url, "username": username, "password": password}
    if ca_file:
        table["ca_file"] = ca_file
    write_private_file(creds, credentials_toml(username, table))
    return creds


def provision_cert(username: str, ca_dir: str | Path, out_dir: str | Path, *, url: str = PROD_CERT_URL,
                   install_dir: str | None = None, overwrite: bool = False) -> Path:
    """Issue `username`'s certificate into `out_dir` with a copy of the CA certificate and
    `<username>.toml`; paths in it point at `install_dir` (where the bundle will live)."""
    out = Path(out_dir)
    creds = _creds_path(out, username, overwrite)
    ca = load_ca(ca_dir)
    _check_ca_copy(ca.cert, out, overwrite)  # before anything is written
    if username == COORDINATOR_USER or is_shard_user(username):
        files = issue_coordinator_cert(ca, out, overwrite=overwrite, username=username)
    else:
        files = issue_device_cert(ca, username, out, overwrite=overwrite)
    copy_ca_cert(ca.cert, out, overwrite)
    where = Path(install_dir) if install_dir else out.resolve()
    table = {"url": url, "ca_file": str(where / "ca.crt"), "cert_file": str(where / files.cert.name),
             "key_file": str(where / files.key.name)}
    write_private_file(creds, credentials_toml(username, table))
    return creds


def credentials_toml(username: str, table: dict[str, str]) -> str:
    # json.dumps of a str is a valid TOML basic string
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items())
    return (f"# Broker credentials for {username!r}, written by `fedge provision`. Secret: keep mode 0600.\n"
            f"[broker]\n{body}")


def write_broker_files(out_dir: str | Path, *, conf_dir: str | None = None, data_dir: str | None = None,
                       overwrite: bool = False, shards: int = 0) -> list[Path]:
    """The shipped configs and ACL, with their paths rewritten for `conf_dir` and `data_dir`;
    the ACL also grants the workers of `shards` shards (shard_users.py).

    A file already there with other content (the operator's edits) is kept: ConfigError, and
    nothing written, unless overwrite. The same content again is no change.
    When the files are used where they are written (no conf_dir, or conf_dir is out_dir), the
    persistence directory they name is created too (make_data_dir). Staged for another place
    (conf_dir elsewhere), they name a directory there, which the installer creates."""
    out = Path(out_dir)
    in_place = installed_in_place(out, conf_dir)
    conf_dir = conf_dir or str(out.resolve())
    data_dir = data_dir or str(Path(conf_dir) / "data")
    texts = {out / name: shipped_text(name, conf_dir, data_dir) for name in SHIPPED}
    texts[out / ACL_NAME] += shard_acl(shards)
    _refuse_replacing({path: text.encode() for path, text in texts.items()}, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, text in texts.items():
        path.write_text(text, encoding="utf-8")
        written.append(path)
    if in_place:
        make_data_dir(data_dir)
        passwd = out / "passwd"
        if not passwd.exists():  # both configs name it, and a certificate-only broker never made one:
            write_private_file(passwd, "", new_owner=BROKER_USER)  # Mosquitto would not start without it
            written.append(passwd)
    return written


def installed_in_place(out_dir: str | Path, conf_dir: str | None) -> bool:
    """Whether broker files written to out_dir are used there (conf_dir unset or the same)."""
    return conf_dir is None or Path(conf_dir).resolve() == Path(out_dir).resolve()


def make_data_dir(path: str | Path) -> Path:
    """Create Mosquitto's persistence directory, mode 0700 (it holds retained messages and
    queued ones). Mosquitto does not create it, and without it logs "Error saving in-memory
    database" at every autosave and loses its sessions on restart. As root, it is given to the
    `mosquitto` user, which Mosquitto 2.0 drops to before it writes there."""
    path = Path(path)
    existed = path.is_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not existed:
        path.chmod(0o700)  # mkdir's mode is masked by the umask
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("mosquitto")
            except KeyError:
                pass  # no such user: mosquitto keeps running as root (or as `user` in its config)
            else:
                os.chown(path, user.pw_uid, user.pw_gid)
    return path


def _refuse_replacing(files: dict[Path, bytes], overwrite: bool) -> None:
    """Unless overwrite: a path that holds something other than what fedge would write there
    is the operator's (a config they edited, their own CA's certificate); name them and stop."""
    refuse_foreign(files, overwrite=overwrite, advice="move them, or pass --force")


def _check_ca_copy(ca_cert: Path, out: Path, overwrite: bool) -> bool:
    """Whether out/ca.crt needs the copy (it is not the CA's own file); ConfigError if that
    would replace another certificate, unless overwrite."""
    if ca_cert.resolve() == (out / "ca.crt").resolve():
        return False
    _refuse_replacing({out / "ca.crt": ca_cert.read_bytes()}, overwrite)
    return True


def copy_ca_cert(ca_cert: Path, out: Path, overwrite: bool) -> None:
    """out/ca.crt, a copy of the CA's certificate (never over another file unless overwrite)."""
    if _check_ca_copy(ca_cert, out, overwrite):
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca_cert, out / "ca.crt")


def _creds_path(out_dir: str | Path, username: str, overwrite: bool) -> Path:
    path = Path(out_dir) / f"{username}.toml"
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; pass --force to issue new credentials (the old ones stop working)")
    return path


# -- the CLI -------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="provision", required=True)

    p = sub.add_parser("ca", help="create the certificate authority for mutual TLS")
    p.add_argument("--out", type=path_arg, required=True, help="directory for ca.crt and ca.key")
    p.add_argument("--name", default="fedge CA", help="the CA's common name")
    p.add_argument("--force", action="store_true", help="replace an existing CA (every issued cert stops working)")

    p = sub.add_parser("broker", help="write the Mosquitto configs and ACL (and, with --ca-dir, the server cert)")
    p.add_argument("--out", type=path_arg, required=True)
    p.add_argument("--conf-dir", type=path_arg, help="where the files will be installed (default: --out)")
    p.add_argument("--data-dir", type=path_arg, help="persistence directory (default: CONF_DIR/data)")
    p.add_argument("--ca-dir", type=path_arg, help="issue server.crt/server.key from this CA and copy ca.crt")
    p.add_argument("--host", action="append", default=[], help="broker DNS name or IP for the server cert (repeat)")
    p.add_argument("--force", action="store_true", help="replace an existing server key")
    p.add_argument("--shards", type=int_in(0, MAX_SHARDS), default=0, metavar="K",
                   help="a sharded fleet's K: the ACL also grants the workers' users fedge-shard-0 .. K-1")

    p = sub.add_parser("ejabberd", help="write the ejabberd cluster's ejabberd.yml (hardware/ejabberd)")
    p.add_argument("--out", type=path_arg, required=True)
    p.add_argument("--shards", type=int_in(0, MAX_SHARDS), default=0, metavar="K",
                   help="a sharded fleet's K: devices may also upload to the shard topics 0 .. K-1")
    p.add_argument("--force", action="store_true", help="replace an ejabberd.yml with other content")

    p = sub.add_parser("identity", help="a device's Ed25519 identity for secure aggregation, added to the directory")
    p.add_argument("--id", required=True, dest="device_id", help="device id")
    p.add_argument("--out", type=path_arg, required=True, help="directory for <id>.identity (secret)")
    p.add_argument("--directory", type=path_arg, required=True,
                   help="the fleet's identities.json (created or updated; share it)")
    p.add_argument("--force", action="store_true", help="replace an existing identity")

    for name, what in (("device", "a device"), ("coordinator", "the coordinator")):
        p = sub.add_parser(name, help=f"credentials for {what}: a password entry, or a client certificate")
        if name == "device":
            p.add_argument("--id", required=True, dest="device_id", help="device id (= broker username, cert CN)")
        p.add_argument("--out", type=path_arg, required=True,
                       help="directory for <id>.toml (and the cert, key, ca.crt)")
        p.add_argument("--passwd-file", type=path_arg,
                       help="Mosquitto password file to add the user to (created if missing)")
        p.add_argument("--cert", action="store_true", help="issue a client certificate instead of a password")
        p.add_argument("--ca-dir", type=path_arg,
                       help="the CA (for --cert; with a password, adds ca_file for mqtts://)")
        p.add_argument("--url", help=f"broker url for the credentials (default {DEV_URL}, or {PROD_CERT_URL} "
                                     "with --cert)")
        p.add_argument("--install-dir", type=path_arg,
                       help="where the cert bundle will live on the target (paths in the .toml)")
        p.add_argument("--force", action="store_true", help="replace existing credentials")
        if name == "coordinator":
            p.add_argument("--shards", type=int_in(0, MAX_SHARDS), default=0, metavar="K",
                           help="also credentials for the shard workers' users fedge-shard-0 .. K-1")


def _check_url(url: str, tls: bool) -> None:
    """The credentials' url as `fedge device run` reads it, before anything is written: `--url
    ftp://x`, or a CA's files beside an mqtt:// url (--ca-dir without --url), made a file it refused."""
    try:
        MqttSettings(url=url, ca_file="ca.crt" if tls else "")
    except ConfigError as exc:
        raise ConfigError(f"--url: {exc}" + ("; with --cert or --ca-dir give --url mqtts://HOST:PORT" if tls else "")) \
            from None


def run(args: argparse.Namespace) -> int:
    # every subcommand writes into the folder --out: a file there, or a symlink to nothing, was a
    # bare NotADirectoryError or FileExistsError from its mkdir
    refuse_file_as_folder(Path(args.out), f"provision {args.provision}")
    if args.provision == "ca":
        ca = create_ca(args.out, name=args.name, overwrite=args.force)
        print(f"CA written: {ca.cert} (share) and {ca.key} (keep offline)")
        return 0
    if args.provision == "broker":
        ca = None
        if args.ca_dir:  # every check before the first write: a refusal leaves the folder as it was
            if not args.host:
                raise ConfigError("--ca-dir needs at least one --host for the server certificate")
            from fedge.tools.broker.certs import cert_paths, server_sans

            server_sans(args.host)
            ca = load_ca(args.ca_dir)
            cert_paths(Path(args.out), "server", args.force)  # the check issue_server_cert makes, made first
            _check_ca_copy(ca.cert, Path(args.out), args.force)
        for path in write_broker_files(args.out, conf_dir=args.conf_dir, data_dir=args.data_dir,
                                       overwrite=args.force, shards=args.shards):
            print(f"wrote {path}")
        data_dir = args.data_dir or str(Path(args.conf_dir or Path(args.out).resolve()) / "data")
        if installed_in_place(args.out, args.conf_dir):
            print(f"created the persistence directory {data_dir} (mode 0700)")
        else:
            print(f"on the broker host, create the persistence directory: install -d -m 0700 -o mosquitto {data_dir}")
        if ca is not None:
            files = issue_server_cert(ca, args.host, args.out, overwrite=args.force)
            copy_ca_cert(ca.cert, Path(args.out), args.force)
            print(f"wrote {files.cert}, {files.key} and {Path(args.out) / 'ca.crt'}")
        return 0
    if args.provision == "ejabberd":
        path, text = Path(args.out) / "ejabberd.yml", ejabberd_config(args.shards)
        _refuse_replacing({path: text.encode()}, args.force)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
        return 0
    if args.provision == "identity":
        from fedge.edge_runtime.kernel.secagg.identity_files import add_to_directory, load_directory, write_identity

        device_id = validate_device_id(args.device_id)
        directory = Path(args.directory)
        if directory.is_dir():  # before the secret key is written, not after
            raise ConfigError(f"--directory {args.directory}: a folder; name the fleet's identities.json file")
        link = dangling_link(directory)  # the write replaced the user's link
        if link:
            raise ConfigError(f"--directory {args.directory}: {link}")
        if directory.exists():  # a file that is no directory: refused before the key is written, which it outlived
            load_directory(directory)
        key = Path(args.out) / f"{device_id}.identity"
        add_to_directory(args.directory, device_id, write_identity(key, overwrite=args.force))
        print(f"{device_id}: identity key in {key} (secret); public key added to {args.directory} "
              "(copy it to every device)")
        return 0
    if args.provision == "device":
        usernames = [validate_device_id(args.device_id)]
    else:  # the leader's user, then its workers' (all before the first write: a refusal writes nothing)
        usernames = [COORDINATOR_USER, *shard_users(args.shards)]
    _check_url(args.url or (PROD_CERT_URL if args.cert else DEV_URL), tls=bool(args.cert or args.ca_dir))
    if args.cert:
        if not args.ca_dir:
            raise ConfigError("--cert needs --ca-dir (make a CA with `fedge provision ca`)")
        if args.passwd_file:
            raise ConfigError("choose --cert or --passwd-file: the certificate listener ignores passwords")
        for username in usernames:
            _creds_path(args.out, username, args.force)
        for username in usernames:
            creds = provision_cert(username, args.ca_dir, args.out, url=args.url or PROD_CERT_URL,
                                   install_dir=args.install_dir, overwrite=args.force)
            print(f"{username}: credentials in {creds} (secret)")
    else:
        if not args.passwd_file:
            raise ConfigError("give --passwd-file (password identity) or --cert --ca-dir (certificate identity)")
        for username in usernames:
            _creds_path(args.out, username, args.force)  # its refusal first: then nothing is written
        ca_file = None
        if args.ca_dir:  # only the CA's certificate is needed, to verify the broker
            ca_cert = Path(args.ca_dir) / "ca.crt"
            if not ca_cert.exists():
                raise ConfigError(f"no {ca_cert}; make a CA with `fedge provision ca`")
            copy_ca_cert(ca_cert, Path(args.out), args.force)
            ca_file = str(Path(args.install_dir or Path(args.out).resolve()) / "ca.crt")
        for username in usernames:
            creds = provision_password(username, args.passwd_file, args.out, url=args.url or DEV_URL,
                                       ca_file=ca_file, overwrite=args.force)
            print(f"{username}: added to {args.passwd_file} (reload the broker: kill -HUP its pid)")
            print(f"{username}: credentials in {creds} (secret)")
    if len(usernames) > 1:
        print(f"workers: set [service] shard_credentials = \"{args.out}\" in the coordinator's service file "
              f"(worker k logs in with {SHARD_USER_PREFIX}k.toml), and give the broker's ACL the same K: "
              f"fedge provision broker --shards {args.shards}")
    return 0
