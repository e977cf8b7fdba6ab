"""Independent OPC UA client (python asyncua) for IronBridge's server tests.

Connects to the gateway's OPC UA server, does what the arguments ask and
prints one JSON object on stdout:

  {"connected": true,
   "namespace_index": 2,
   "tree": [{"path": "Machines/press-7/Tags/temp_c", "node_id": "Machines/...",
             "id_type": "String", "namespace_uri": "urn:ironbridge:gateway",
             "node_class": "Variable"}, ...],
   "reads": {"<path>": {"value": ..., "status": "Good", "is_good": true,
                        "source_timestamp_us": 1700000000123456}},
   "subscription": [{"value": 1.5, "source_timestamp_us": ...}, ...],
   "write": {"<path>": "BadNotWritable"},
   "calls": [{"method": "Models/m/Activate", "args": ["1.1.0"], "status": "Good"}]}

or {"connected": false, "error": "..."} when the connection or session is
refused (the tests expect that for insecure or untrusted clients).

Security: --policy None (default) or Basic256Sha256 / Aes128Sha256RsaOaep /
Aes256Sha256RsaPss with SignAndEncrypt and a client certificate generated in
--client-pki (self-signed, application URI --app-uri). --server-cert pins the
server's certificate (else it is fetched from the endpoints). --user and
--password-env select username/password login, else anonymous.

--tag-probe Machines/<machine>/Tags/<tag> looks at one node the way an
HMI's configuration tool does, into "probe": the NodeId its browse path
translates to (and the status of a path that does not exist), its references
both ways, its attributes, and its parent folder browsed one reference per
Browse/BrowseNext.

--call Models/<model>/Activate=1.1.0 (or Models/<model>/Rollback) calls the
method on its parent object, with the string argument after '=' if any;
calls run after the reads, in order, and each one's status is reported.
"""

import argparse
import asyncio
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.ua import status_codes

NAMESPACE_URI = "urn:ironbridge:gateway"


def micros(ts):
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    delta = ts - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def jsonable(value):
    if isinstance(value, datetime):
        return {"datetime_us": micros(value)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def status_name(status):
    if status is None:
        return "Good"
    return status_codes.get_name_and_doc(status.value)[0]


async def browse_tree(client, root, prefix, out, ns_array):
    for child in await root.get_children():
        name = await child.read_browse_name()
        node_class = await child.read_node_class()
        path = f"{prefix}/{name.Name}" if prefix else name.Name
        nid = child.nodeid
        out.append(
            {
                "path": path,
                "browse_namespace_uri": ns_array[name.NamespaceIndex],
                "node_id": nid.Identifier if isinstance(nid.Identifier, str) else str(nid.Identifier),
                "id_type": nid.NodeIdType.name,
                "namespace_uri": ns_array[nid.NamespaceIndex],
                "node_class": node_class.name,
            }
        )
        if node_class == ua.NodeClass.Object:
            await browse_tree(client, child, path, out, ns_array)


async def run(args):
    client = Client(url=args.url, timeout=10)
    client.application_uri = args.app_uri
    if args.policy != "None":
        pki = Path(args.client_pki)
        cert, key = await client.setup_self_signed_certificate(pki / "client_key.pem", pki / "client_cert.der")
        policy = getattr(security_policies, f"SecurityPolicy{args.policy}")
        await client.set_security(
            policy,
            str(cert),
            str(key),
            server_certificate=args.server_cert,
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
    if args.user:
        client.set_user(args.user)
        client.set_password(os.environ.get(args.password_env, ""))

    result = {"connected": False}
    if args.force_none_session:
        return await force_none_session(client, args, result)
    # Sessions of other (anonymous, SecurityPolicy None) clients kept open
    # while this one connects, to meet the server's session limit.
    held = []
    hold_errors = []
    for _ in range(args.hold_sessions):
        other = Client(url=args.url, timeout=10)
        try:
            await other.connect()
            held.append(other)
        except Exception as e:  # noqa: BLE001 - a refusal is an answer here
            hold_errors.append(f"{type(e).__name__}: {e}")
    if args.hold_sessions:
        result["held_sessions"] = len(held)
        result["hold_errors"] = hold_errors
    try:
        try:
            await client.connect()
        except Exception as e:  # noqa: BLE001 - any refusal is an answer here
            result["error"] = f"{type(e).__name__}: {e}"
            return result
        return await connected_run(client, args, result)
    finally:
        for other in held:
            await other.disconnect()


async def connected_run(client, args, result):
    result["connected"] = True
    try:
        ns_array = await client.get_namespace_array()
        ns = ns_array.index(NAMESPACE_URI)
        result["namespace_index"] = ns

        def node(path):
            return client.get_node(ua.NodeId(path, ns, ua.NodeIdType.String))

        if args.browse:
            objects = client.nodes.objects
            root = await objects.get_child([ua.QualifiedName("IronBridge", ns)])
            tree = []
            await browse_tree(client, root, "", tree, ns_array)
            result["root_node_id"] = root.nodeid.Identifier
            result["tree"] = tree

        reads = {}
        for path in args.read:
            dv = await node(path).read_data_value(raise_on_bad_status=False)
            try:
                dt = await node(path).read_data_type()
            except ua.UaStatusCodeError:
                # A node that does not exist (yet): the value's status says so.
                dt = None
            reads[path] = {
                "value": jsonable(dv.Value.Value if dv.Value is not None else None),
                "status": status_name(dv.StatusCode),
                "is_good": dv.StatusCode is None or dv.StatusCode.is_good(),
                "is_bad": dv.StatusCode is not None and dv.StatusCode.is_bad(),
                "source_timestamp_us": micros(dv.SourceTimestamp),
                "data_type": None if dt is None else dt.Identifier if isinstance(dt.Identifier, int) else str(dt.Identifier),
            }
        result["reads"] = reads

        writes = {}
        for path in args.write:
            try:
                await node(path).write_value(ua.DataValue(ua.Variant(123.0, ua.VariantType.Double)))
                writes[path] = "Good"
            except ua.UaStatusCodeError as e:
                writes[path] = status_codes.get_name_and_doc(e.code)[0]
        result["write"] = writes

        calls = []
        for spec in args.call:
            path, _, arg = spec.partition("=")
            parent = path.rsplit("/", 1)[0]
            call_args = [ua.Variant(arg, ua.VariantType.String)] if arg else []
            try:
                await node(parent).call_method(ua.NodeId(path, ns, ua.NodeIdType.String), *call_args)
                status = "Good"
            except ua.UaStatusCodeError as e:
                status = status_codes.get_name_and_doc(e.code)[0]
            calls.append({"method": path, "args": [arg] if arg else [], "status": status})
        result["calls"] = calls

        if args.tag_probe:
            result["probe"] = await tag_probe(client, ns, args.tag_probe)

        if args.subscribe:
            result["subscription"] = await collect_changes(
                client, node(args.subscribe), args.count, args.sampling_interval,
                args.publishing_interval, result
            )
    finally:
        await client.disconnect()
    return result


def reference_json(ref, ns_array):
    target = ref.NodeId
    return {
        "reference_type": ref.ReferenceTypeId.Identifier,
        "is_forward": ref.IsForward,
        "node_id": str(target.Identifier),
        "namespace_uri": ns_array[target.NamespaceIndex],
        "browse_name": ref.BrowseName.Name,
        "node_class": ref.NodeClass.name,
        "type_definition": ref.TypeDefinition.Identifier,
    }


async def tag_probe(client, ns, path):
    ns_array = await client.get_namespace_array()
    probe = {}
    names = [ua.QualifiedName(part, ns) for part in ["IronBridge", *path.split("/")]]
    found = await client.nodes.objects.get_child(names)
    probe["translated"] = found.nodeid.Identifier
    try:
        await client.nodes.objects.get_child(names[:-1] + [ua.QualifiedName("no_such_tag", ns)])
        probe["missing"] = "Good"
    except ua.UaStatusCodeError as e:
        probe["missing"] = status_codes.get_name_and_doc(e.code)[0]

    node = client.get_node(ua.NodeId(path, ns, ua.NodeIdType.String))
    refs = await node.get_references(refs=ua.ObjectIds.References, direction=ua.BrowseDirection.Both)
    probe["references"] = [reference_json(r, ns_array) for r in refs]

    attributes = {}
    for name in ["NodeClass", "BrowseName", "DisplayName", "DataType", "ValueRank",
                 "AccessLevel", "UserAccessLevel", "Historizing"]:
        dv = await node.read_attribute(getattr(ua.AttributeIds, name), raise_on_bad_status=False)
        value = dv.Value.Value if dv.Value is not None else None
        if isinstance(value, ua.QualifiedName):
            value = f"{ns_array[value.NamespaceIndex]}:{value.Name}"
        elif isinstance(value, ua.LocalizedText):
            value = value.Text
        elif isinstance(value, ua.NodeId):
            value = value.Identifier
        attributes[name] = {"value": jsonable(value), "status": status_name(dv.StatusCode)}
    probe["attributes"] = attributes

    # The parent folder, one reference per answer: every tag must come back
    # through BrowseNext's continuation points.
    folder = ua.NodeId(path.rsplit("/", 1)[0], ns, ua.NodeIdType.String)
    desc = ua.BrowseDescription()
    desc.NodeId = folder
    desc.BrowseDirection = ua.BrowseDirection.Forward
    desc.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HierarchicalReferences)
    desc.IncludeSubtypes = True
    desc.NodeClassMask = 0
    desc.ResultMask = ua.BrowseResultMask.All
    params = ua.BrowseParameters()
    params.View = ua.ViewDescription()
    # A null timestamp: "the current view" (asyncua's own browse does this).
    params.View.Timestamp = ua.get_win_epoch()
    params.RequestedMaxReferencesPerNode = 1
    params.NodesToBrowse = [desc]
    results = await client.uaclient.browse(params)
    answers = [results[0]]
    while answers[-1].ContinuationPoint and len(answers) < 1000:
        next_params = ua.BrowseNextParameters()
        next_params.ReleaseContinuationPoints = False
        next_params.ContinuationPoints = [answers[-1].ContinuationPoint]
        answers.append((await client.uaclient.browse_next(next_params))[0])
    probe["folder_answers"] = [
        {"status": status_name(a.StatusCode), "references": [reference_json(r, ns_array) for r in a.References]}
        for a in answers
    ]
    return probe


async def force_none_session(client, args, result):
    """Tries a session over SecurityPolicy None even though the server lists
    no such endpoint: asyncua alone would give up on the endpoint list, but
    the server itself must refuse (at CreateSession, ActivateSession or the
    first read)."""
    stage = "open_secure_channel"
    try:
        await client.connect_socket()
        await client.send_hello()
        await client.open_secure_channel()
        stage = "create_session"
        desc = ua.ApplicationDescription()
        desc.ApplicationUri = client.application_uri
        desc.ApplicationName = ua.LocalizedText("forced-none")
        desc.ApplicationType = ua.ApplicationType.Client
        params = ua.CreateSessionParameters()
        params.ClientNonce = os.urandom(32)
        params.ClientCertificate = None
        params.ClientDescription = desc
        params.EndpointUrl = args.url
        params.SessionName = "forced-none"
        params.RequestedSessionTimeout = 60000
        params.MaxResponseMessageSize = 0
        await client.uaclient.create_session(params)
        stage = "activate_session"
        aparams = ua.ActivateSessionParameters()
        aparams.LocaleIds = ["en"]
        aparams.UserIdentityToken = ua.AnonymousIdentityToken()
        aparams.UserIdentityToken.PolicyId = "anonymous"
        await client.uaclient.activate_session(aparams)
        stage = "read"
        dv = await client.get_node(ua.NodeId(ua.ObjectIds.Server_NamespaceArray)).read_data_value()
        result["connected"] = True
        result["namespaces"] = dv.Value.Value
    except Exception as e:  # noqa: BLE001 - any refusal is an answer here
        result["refused_at"] = stage
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        try:
            client.disconnect_socket()
        except Exception:  # noqa: BLE001
            pass
    return result


class Collector:
    def __init__(self):
        self.changes = asyncio.Queue()

    def datachange_notification(self, node, val, data):
        dv = data.monitored_item.Value
        self.changes.put_nowait(
            {
                "value": jsonable(val),
                "status": status_name(dv.StatusCode),
                "source_timestamp_us": micros(dv.SourceTimestamp),
            }
        )


async def collect_changes(client, node, count, sampling_interval, publishing_interval, result):
    """Gathers notifications until `count` distinct values arrived after the
    first one (the current value a new monitored item always reports).
    Notes the server's revised publishing interval in `result`."""
    collector = Collector()
    # asyncua keeps the revised interval to itself: look at the server's
    # answer where asyncua reads it.
    revise = client.get_subscription_revised_params

    def note_revised(params, answer):
        result["revised_publishing_interval_ms"] = answer.RevisedPublishingInterval
        return revise(params, answer)

    client.get_subscription_revised_params = note_revised
    sub = await client.create_subscription(publishing_interval, collector)
    await sub.subscribe_data_change(node, sampling_interval=sampling_interval)
    seen = []
    first = await asyncio.wait_for(collector.changes.get(), 30)
    seen.append(first)
    distinct = set()
    while len(distinct) < count:
        change = await asyncio.wait_for(collector.changes.get(), 30)
        seen.append(change)
        if change["value"] != first["value"]:
            distinct.add(json.dumps(change["value"]))
    await sub.delete()
    return seen


def bind_source_address(address):
    """Makes every TCP connection of this process start from `address`
    (asyncua has no option for it)."""
    original = asyncio.BaseEventLoop.create_connection

    async def create_connection(self, protocol_factory, host=None, port=None, **kwargs):
        kwargs.setdefault("local_addr", (address, 0))
        return await original(self, protocol_factory, host, port, **kwargs)

    asyncio.BaseEventLoop.create_connection = create_connection


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--policy", default="None")
    p.add_argument("--client-pki")
    p.add_argument("--server-cert")
    p.add_argument("--app-uri", default="urn:ironbridge:test-client")
    p.add_argument("--user")
    p.add_argument("--password-env", default="IRONBRIDGE_TEST_OPCUA_PASSWORD")
    p.add_argument("--force-none-session", action="store_true")
    p.add_argument("--browse", action="store_true")
    p.add_argument("--read", action="append", default=[])
    p.add_argument("--write", action="append", default=[])
    p.add_argument("--call", action="append", default=[])
    p.add_argument("--tag-probe")
    p.add_argument("--subscribe")
    p.add_argument("--count", type=int, default=3)
    # Open this many other sessions first and keep them while connecting.
    p.add_argument("--hold-sessions", type=int, default=0)
    # The monitored item's sampling interval in ms; -1 asks for the
    # publishing interval (OPC UA Part 4, 7.16).
    p.add_argument("--sampling-interval", type=float, default=0.0)
    # The subscription's requested publishing interval in ms (the server
    # revises it to at least its minimum).
    p.add_argument("--publishing-interval", type=float, default=100.0)
    # Connect from this local address (e.g. 127.0.0.2): another client
    # address on the same machine, for the per-address login throttle.
    p.add_argument("--source-address")
    args = p.parse_args()
    if args.source_address:
        bind_source_address(args.source_address)
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
