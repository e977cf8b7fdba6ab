"""An OPC UA machine for IronBridge's OPC UA client tests, served by asyncua 2.1.

Serves a line of variables of many types under a machine namespace whose index
is chosen on the command line (not 2, by default), with SignAndEncrypt
endpoints, a persistent self-signed server certificate and an optional
username/password, and writes the layout with the value rules as JSON, so the
Rust tests compare against what this independent peer serves, not against
constants of their own.

Usage: opcua_server.py PORT LAYOUT_JSON [options]   (PORT 0: any free port,
written to the layout; restart with that port to keep the endpoint)

Options:
  --cert-dir DIR              server_cert.der + server_key.pem, created if absent,
                              reused across restarts (default: next to the layout)
  --regenerate-cert           make a new key and certificate even if DIR has one
  --app-uri URI               the server's ApplicationUri (in the cert's SAN too)
  --insecure                  also offer SecurityPolicy None (default: not offered)
  --user NAME --password PW   only this user may activate a session (anonymous
                              refused); without --user: anonymous only
  --user-cert DIR             only an X.509 user identity with DIR/user_cert.der
                              (its signature checked) may activate a session;
                              user_cert.der + user_key.pem are created in DIR
                              if absent, for the client under test to present
  --trusted-client-certs DIR  refuse client certificates not in DIR (.der/.pem),
                              and those whose SAN URI differs from the client's
                              ApplicationUri (default: any client cert accepted)
  --namespace-position N      index of urn:ironbridge:test:machine (default 3, >= 2)
  --omit-node ID              start without that variable (repeatable)
  --delete-node ID            delete that variable ... (repeatable)
  --delete-after-s S          ... S seconds after the layout is written
  --tick-ms MS                period of the changing values (default 50)

ID is relative to the machine namespace (`s=Line.Blob`, `i=5001`) or absolute
(`nsu=urn:ironbridge:test:machine;s=Line.Blob`).

SIGTERM stops the server cleanly (sessions closed); SIGKILL is what the Rust
harness uses to simulate a machine losing power.
"""

import argparse
import asyncio
import datetime
import hashlib
import ipaddress
import json
import logging
import os
import signal
import socket
import struct
import sys
import uuid
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from asyncua import Server, ua
from asyncua.crypto import cert_gen, security_policies
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.common.utils import ServiceError
from asyncua.crypto.security_policies import SecurityPolicyNone
from asyncua.server import uaprocessor
from asyncua.server.user_managers import UserManager

MACHINE_NS = "urn:ironbridge:test:machine"
PAD_NS = "urn:ironbridge:test:pad{}"
DEFAULT_APP_URI = "urn:ironbridge:test:opcua-server"
ENDPOINT_PATH = "/ironbridge/machine"

POLICIES = {
    "Basic256Sha256": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Aes128Sha256RsaOaep": ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    "Aes256Sha256RsaPss": ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}

# UNECE code "CEL" as OPC UA Part 8 encodes it in EUInformation.UnitId.
CELSIUS = {
    "namespace_uri": "http://www.opcfoundation.org/UA/units/un/cefact",
    "unit_id": (ord("C") << 16) | (ord("E") << 8) | ord("L"),
    "display_name": "°C",
    "description": "degree Celsius",
}

FIXED_SOURCE_TIME = datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)
GUID_ID = uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63")

VT = ua.VariantType

# rel_id, browse name, variant type, rule, options. A rule is
#   ("constant", python value) | ("sawtooth", offset, step, period_ticks)
#   | ("counter", start, step)
# Sawtooth offset and step are exact binary fractions: the Rust side computes
# offset + step * k and gets the same f64 bits.
NODES = [
    ("s=Line.Speed", "Speed", VT.Double, ("sawtooth", 10.0, 0.5, 200), {}),
    ("s=Line.Count", "Count", VT.UInt32, ("counter", 0, 1), {}),
    ("s=Line.Temperature", "Temperature", VT.Double, ("constant", 21.5), {"unit": CELSIUS}),
    ("s=Line.Pressure", "Pressure", VT.Float, ("constant", 3.14159), {}),
    ("s=Line.Energy", "Energy", VT.Int64, ("constant", -9007199254740993), {}),
    ("s=Line.Running", "Running", VT.Boolean, ("constant", True), {}),
    ("s=Line.Program", "Program", VT.String, ("constant", "PRG-0042 Wärmebehandlung"), {}),
    ("s=Line.Blob", "Blob", VT.ByteString, ("constant", b"\x00\x01\xfe\xff"), {}),
    (
        "s=Line.Shaky",
        "Shaky",
        VT.Double,
        ("constant", 7.25),
        {"status": "UncertainSensorNotAccurate"},
    ),
    # asyncua nulls the value of a Bad data value (Part 4 7.7.1).
    ("s=Line.Broken", "Broken", VT.Double, ("constant", None), {"status": "BadSensorFailure"}),
    ("s=Line.Stamped", "Stamped", VT.Int32, ("constant", 1234), {"source_time": FIXED_SOURCE_TIME}),
    ("i=5001", "Numeric5001", VT.Int16, ("constant", -321), {}),
    (f"g={GUID_ID}", "GuidValue", VT.UInt16, ("constant", 65000), {}),
]

log = logging.getLogger("opcua_server")


def micros(ts):
    return int((ts - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)) / datetime.timedelta(microseconds=1))


def float_json(x):
    # The bits make the comparison exact whatever the JSON float parser does.
    return {"float": {"bits": struct.unpack(">Q", struct.pack(">d", x))[0], "value": x}}


def expected_json(vtype, value):
    """The value as a client decodes it (a Float is widened after the round
    trip through 32 bits)."""
    if value is None:
        return "null"
    if vtype == VT.Double:
        return float_json(value)
    if vtype == VT.Float:
        return float_json(struct.unpack(">f", struct.pack(">f", value))[0])
    if vtype == VT.Boolean:
        return {"bool": value}
    if vtype in (VT.SByte, VT.Int16, VT.Int32, VT.Int64):
        return {"int": value}
    if vtype in (VT.Byte, VT.UInt16, VT.UInt32, VT.UInt64):
        return {"uint": value}
    if vtype == VT.String:
        return {"string": value}
    if vtype == VT.ByteString:
        return {"bytes_hex": value.hex()}
    raise ValueError(f"no JSON form for {vtype}")


def rule_json(vtype, rule):
    if rule[0] == "constant":
        return {"constant": expected_json(vtype, rule[1])}
    if rule[0] == "sawtooth":
        _, offset, step, period = rule
        return {"sawtooth": {"offset": offset, "step": step, "period_ticks": period}}
    _, start, step = rule
    return {"counter": {"start": start, "step": step}}


def value_at(vtype, rule, tick):
    if rule[0] == "constant":
        return rule[1]
    if rule[0] == "sawtooth":
        _, offset, step, period = rule
        return offset + step * (tick % period)
    _, start, step = rule
    value = start + step * tick
    if vtype == VT.UInt32:
        value %= 2**32
    return value


def relative_id(text, ns_index):
    """`s=Line.Blob` from any accepted spelling of a machine node id."""
    head, sep, rest = text.partition(";")
    if sep and head.startswith("nsu="):
        if head[4:] != MACHINE_NS:
            raise SystemExit(f"{text}: not in {MACHINE_NS}")
        return rest
    if sep and head.startswith("ns="):
        if int(head[3:]) != ns_index:
            raise SystemExit(f"{text}: the machine namespace is ns={ns_index}")
        return rest
    return text


def node_id(rel_id, ns_index):
    kind, _, ident = rel_id.partition("=")
    if kind == "s":
        return ua.NodeId(ident, ns_index, ua.NodeIdType.String)
    if kind == "i":
        return ua.NodeId(int(ident), ns_index, ua.NodeIdType.Numeric)
    if kind == "g":
        return ua.NodeId(uuid.UUID(ident), ns_index, ua.NodeIdType.Guid)
    raise ValueError(rel_id)


class OneUserManager(UserManager):
    """Only NAME with PW: anything else (other user, wrong password,
    anonymous, certificate token) is refused with BadUserAccessDenied."""

    def __init__(self, name, password):
        self.name = name
        self.password = password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is not None and username == self.name and password == self.password:
            return User(role=UserRole.User, name=username)
        log.warning("refused user %r", username)
        return None


class OneCertificateUserManager(UserManager):
    """Only the X.509 user certificate CERT_DER; asyncua has already checked
    the token's signature with that certificate's key before asking. Anything
    else (other certificate, user name, anonymous) is refused."""

    def __init__(self, cert_der):
        self.cert_der = cert_der

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if certificate is not None and certificate == self.cert_der:
            return User(role=UserRole.User, name="x509-user")
        log.warning("refused identity (user %r, certificate %s)", username, certificate is not None)
        return None


def load_or_create_user_cert(user_dir):
    """A user's key and self-signed certificate, as a plant PKI would issue
    it: user_cert.der + user_key.pem in user_dir, kept across restarts."""
    user_dir.mkdir(parents=True, exist_ok=True)
    cert_path = user_dir / "user_cert.der"
    key_path = user_dir / "user_key.pem"
    if not (cert_path.is_file() and key_path.is_file()):
        key = cert_gen.generate_private_key()
        cert = cert_gen.generate_self_signed_app_certificate(
            key,
            "IronBridge test user",
            {"organizationName": "IronBridge tests"},
            [x509.UniformResourceIdentifier("urn:ironbridge:test:user")],
            extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
            days=365,
        )
        key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
        cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    return cert_path.read_bytes()


SESSION_REQUESTS = (
    ua.NodeId(ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary),
    ua.NodeId(ua.ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary),
)


def refuse_sessions_without_security():
    """asyncua 2.1 opens a SecurityPolicy None channel whatever the endpoints
    say (GetEndpoints needs one) and then also creates and activates sessions
    on it: a client could read everything without any security from a server
    that offers none. A real secure-only server refuses that, so this one
    answers CreateSession/ActivateSession on a None channel with
    BadSecurityPolicyRejected (unless --insecure)."""
    original = uaprocessor.UaProcessor._process_message

    async def guarded(self, typeid, requesthdr, seqhdr, body):
        if typeid in SESSION_REQUESTS and self._connection.security_policy.URI == SecurityPolicyNone.URI:
            log.warning("refused a session on a SecurityPolicy None channel")
            raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
        return await original(self, typeid, requesthdr, seqhdr, body)

    uaprocessor.UaProcessor._process_message = guarded


def trust_list_validator(trust_dir):
    """Client certificates must be valid now, name the client's
    ApplicationUri in their SAN (asyncua's checks), and be one of the
    certificates in trust_dir byte for byte (DER or PEM files; no CA chains:
    a test trusts the self-signed certificate of its client). The directory
    is read again for every CreateSession, so a test can trust a client while
    the server runs, as an operator would; an empty or missing one trusts
    nobody."""
    checks = CertificateValidator(
        CertificateValidatorOptions.TIME_RANGE
        | CertificateValidatorOptions.URI
        | CertificateValidatorOptions.PEER_CLIENT
    )

    async def validate(cert, app_description):
        await checks.validate(cert, app_description)
        der = cert.public_bytes(Encoding.DER)
        for path in sorted(trust_dir.glob("*")) if trust_dir.is_dir() else []:
            data = path.read_bytes()
            if path.suffix.lower() == ".pem":
                try:
                    data = x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
                except ValueError:
                    continue
            if data == der:
                return
        log.warning("refused an untrusted client certificate (%s)", cert.subject.rfc4514_string())
        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    return validate


def load_or_create_cert(cert_dir, app_uri, regenerate):
    """The server's key and self-signed certificate, kept in cert_dir: a
    restart serves the same certificate, so a client that trusted it once
    keeps trusting it. Regenerated on request or when the app URI changed."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    cert_path = cert_dir / "server_cert.der"
    key_path = cert_dir / "server_key.pem"
    if not regenerate and cert_path.is_file() and key_path.is_file():
        cert = x509.load_der_x509_certificate(cert_path.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if app_uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            return cert_path, key_path, False
        log.warning("certificate in %s is for another application URI: new one", cert_dir)
    key = cert_gen.generate_private_key()
    names = [x509.UniformResourceIdentifier(app_uri), x509.DNSName("localhost")]
    hostname = socket.gethostname()
    if hostname and hostname != "localhost":
        names.append(x509.DNSName(hostname))
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        "IronBridge test OPC UA server",
        {"organizationName": "IronBridge tests"},
        names,
        extended=[ExtendedKeyUsageOID.SERVER_AUTH],
        days=365,
    )
    tmp = key_path.with_suffix(".tmp")
    tmp.write_bytes(cert_gen.dump_private_key_as_pem(key))
    os.replace(tmp, key_path)
    tmp = cert_path.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(Encoding.DER))
    os.replace(tmp, cert_path)
    return cert_path, key_path, True


def parse_args(argv):
    p = argparse.ArgumentParser(description="IronBridge test OPC UA machine (asyncua)")
    p.add_argument("port", type=int)
    p.add_argument("layout")
    p.add_argument("--cert-dir")
    p.add_argument("--regenerate-cert", action="store_true")
    p.add_argument("--app-uri", default=DEFAULT_APP_URI)
    p.add_argument("--insecure", action="store_true")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--user-cert")
    p.add_argument("--trusted-client-certs")
    p.add_argument("--namespace-position", type=int, default=3)
    p.add_argument("--omit-node", action="append", default=[])
    p.add_argument("--delete-node", action="append", default=[])
    p.add_argument("--delete-after-s", type=float)
    p.add_argument("--tick-ms", type=int, default=50)
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args(argv)
    if (args.user is None) != (args.password is None):
        p.error("--user and --password go together")
    if args.user and args.user_cert:
        p.error("--user and --user-cert exclude each other")
    if args.delete_node and args.delete_after_s is None:
        p.error("--delete-node needs --delete-after-s")
    if args.tick_ms <= 0:
        p.error("--tick-ms must be positive")
    return args


async def main(argv):
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="opcua_server %(levelname)s %(name)s: %(message)s")
    layout_path = Path(args.layout)
    cert_dir = Path(args.cert_dir) if args.cert_dir else layout_path.parent / "server-pki"

    if args.user:
        user_manager = OneUserManager(args.user, args.password)
        identity_tokens = [ua.UserNameIdentityToken]
    elif args.user_cert:
        user_manager = OneCertificateUserManager(load_or_create_user_cert(Path(args.user_cert)))
        identity_tokens = [ua.X509IdentityToken]
    else:
        user_manager = None
        identity_tokens = [ua.AnonymousIdentityToken]
    server = Server(user_manager=user_manager)
    await server.init()
    server.disable_clock()
    await server.set_application_uri(args.app_uri)
    server.set_server_name("IronBridge test machine")
    server.product_uri = "urn:ironbridge:test:product"
    # Port fixed up below once bound (PORT 0).
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}{ENDPOINT_PATH}")

    cert_path, key_path, cert_created = load_or_create_cert(cert_dir, args.app_uri, args.regenerate_cert)
    await server.load_certificate(str(cert_path))
    await server.load_private_key(str(key_path))
    policies = list(POLICIES.values())
    if args.insecure:
        policies.insert(0, ua.SecurityPolicyType.NoSecurity)
    else:
        refuse_sessions_without_security()
    server.set_security_policy(policies)
    server.set_identity_tokens(identity_tokens)

    if args.trusted_client_certs:
        server.iserver.certificate_validator = trust_list_validator(Path(args.trusted_client_certs))

    # Namespaces: 0 is OPC UA's, 1 the server's application URI; padding
    # pushes the machine namespace to the requested index.
    ns_array = await server.get_namespace_array()
    if args.namespace_position < len(ns_array):
        raise SystemExit(f"--namespace-position must be >= {len(ns_array)}")
    pad = 1
    while len(ns_array) < args.namespace_position:
        await server.register_namespace(PAD_NS.format(pad))
        pad += 1
        ns_array = await server.get_namespace_array()
    ns = await server.register_namespace(MACHINE_NS)
    assert ns == args.namespace_position, (ns, args.namespace_position)
    ns_array = await server.get_namespace_array()

    known = {rel for rel, *_ in NODES}
    omitted = {relative_id(t, ns) for t in args.omit_node}
    to_delete = {relative_id(t, ns) for t in args.delete_node}
    for rel in omitted | to_delete:
        if rel not in known:
            raise SystemExit(f"{rel}: no such node (known: {sorted(known)})")

    line = await server.nodes.objects.add_object(ua.NodeId("Line", ns, ua.NodeIdType.String), ua.QualifiedName("Line", ns))
    served = {}  # rel_id -> (node, vtype, rule, opts)
    now = datetime.datetime.now(datetime.timezone.utc)
    for rel, name, vtype, rule, opts in NODES:
        if rel in omitted:
            continue
        nid = node_id(rel, ns)
        initial = value_at(vtype, rule, 0)
        # A Bad value is written as null below; the variable is made typed.
        made = initial if initial is not None else ua.get_default_value(vtype)
        var = await line.add_variable(nid, ua.QualifiedName(name, ns), ua.Variant(made, vtype), vtype)
        if "unit" in opts:
            u = opts["unit"]
            eu = ua.EUInformation(
                NamespaceUri=u["namespace_uri"],
                UnitId=u["unit_id"],
                DisplayName=ua.LocalizedText(u["display_name"]),
                Description=ua.LocalizedText(u["description"]),
            )
            await var.add_property(
                ua.NodeId(f"{nid.Identifier}.EngineeringUnits", ns, ua.NodeIdType.String),
                ua.QualifiedName("EngineeringUnits", 0),
                ua.Variant(eu, VT.ExtensionObject),
                datatype=ua.NodeId(ua.ObjectIds.EUInformation),
            )
        status = ua.StatusCode(getattr(ua.StatusCodes, opts.get("status", "Good")))
        source_time = opts.get("source_time", now)
        await server.write_attribute_value(
            nid,
            ua.DataValue(
                ua.Variant(initial, vtype) if initial is not None else ua.Variant(None, VT.Null),
                StatusCode=status,
                SourceTimestamp=source_time,
            ),
        )
        served[rel] = (var, vtype, rule, opts)

    await server.start()
    # PORT 0: asyncua binds what the kernel chose; advertise that port (the
    # endpoints were made from the URL before binding).
    port = server.bserver.port
    url = f"opc.tcp://127.0.0.1:{port}{ENDPOINT_PATH}"
    server.set_endpoint(url)
    for edp in server.iserver.endpoints:
        edp.EndpointUrl = url
        edp.Server.DiscoveryUrls = [url]

    tick_s = args.tick_ms / 1000.0
    ticking = [(rel, vtype, rule) for rel, (_, vtype, rule, _) in served.items() if rule[0] != "constant"]

    async def tick_loop():
        # Each tick's values are a function of the tick number only, so the
        # tests can check them; tick 0 is the initial value. Sleeping to
        # absolute deadlines keeps the rate without drift.
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * tick_s - loop.time()))
            stamp = datetime.datetime.now(datetime.timezone.utc)
            for rel, vtype, rule in ticking:
                if rel not in served:
                    continue
                dv = ua.DataValue(ua.Variant(value_at(vtype, rule, tick), vtype), SourceTimestamp=stamp)
                await server.write_attribute_value(node_id(rel, ns), dv)

    async def delete_later():
        await asyncio.sleep(args.delete_after_s)
        for rel in sorted(to_delete):
            entry = served.pop(rel, None)
            if entry is not None:
                await server.delete_nodes([entry[0]], recursive=True)
                print(f"opcua_server: deleted {rel}", flush=True)

    with open(cert_path, "rb") as f:
        cert_der = f.read()
    layout = {
        "port": port,
        "endpoint_url": url,
        "application_uri": args.app_uri,
        "namespace_uri": MACHINE_NS,
        "namespace_index": ns,
        "namespace_array": ns_array,
        "security": {
            "policies": list(POLICIES),
            "policy_uris": [security_policies.SECURITY_POLICY_TYPE_MAP[t][0].URI for t in POLICIES.values()],
            "mode": "SignAndEncrypt",
            "insecure": args.insecure,
            "user": args.user,
            "user_cert": str(Path(args.user_cert) / "user_cert.der") if args.user_cert else None,
            "user_key": str(Path(args.user_cert) / "user_key.pem") if args.user_cert else None,
            "anonymous": args.user is None and args.user_cert is None,
            "client_certs": "trusted" if args.trusted_client_certs else "any",
        },
        "server_cert": str(cert_path.resolve()),
        "server_cert_sha1": hashlib.sha1(cert_der).hexdigest(),
        "server_cert_created": cert_created,
        "tick_ms": args.tick_ms,
        "pid": os.getpid(),
        "nodes": [],
    }
    for rel, name, vtype, rule, opts in NODES:
        status_name = opts.get("status", "Good")
        layout["nodes"].append(
            {
                "name": f"Line.{name}",
                "browse_path": f"Line/{name}",
                "node_id": f"nsu={MACHINE_NS};{rel}",
                "node_id_ns": f"ns={ns};{rel}",
                "data_type": vtype.name,
                "unit": opts.get("unit"),
                "rule": rule_json(vtype, rule),
                "status": {"name": status_name, "code": getattr(ua.StatusCodes, status_name)},
                "source_timestamp_us": micros(opts["source_time"]) if "source_time" in opts else None,
                "present": rel not in omitted,
                "delete_after_s": args.delete_after_s if rel in to_delete else None,
            }
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    tasks = [asyncio.create_task(tick_loop())]
    if to_delete:
        tasks.append(asyncio.create_task(delete_later()))

    # Listening: now the layout (the harness waits for this file).
    tmp = str(layout_path) + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(layout, f, indent=1, ensure_ascii=False)
    os.replace(tmp, layout_path)
    print(
        f"opcua_server: {url} ns={ns} {len(served)} variables "
        f"user={args.user or ('x509' if args.user_cert else '-')} insecure={args.insecure} clients={layout['security']['client_certs']}",
        flush=True,
    )

    await stop.wait()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await server.stop()
    print("opcua_server: stopped", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
