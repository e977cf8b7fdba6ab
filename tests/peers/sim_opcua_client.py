"""Independent OPC UA client (python asyncua) for the simulator's OPC UA machine.

Connects to `ironbridge-sim serve-opcua` (or an in-process OpcUaMachine), does
what the arguments ask and prints one JSON object on stdout:

  {"connected": true,
   "namespace_array": ["http://opcfoundation.org/UA/", ...],
   "namespace_index": 3,
   "variables": {"Spindle.Speed": {"browse_path": "Spindle/Speed",
                                   "data_type": "Double",
                                   "type_definition": 17497,
                                   "units": {"namespace_uri": "...", "unit_id": 5394509,
                                             "display_name": "rpm", "description": "..."}}, ...},
   "samples": [{"Spindle.Speed": {"value": 12001.0, "status": "Good",
                                  "source_timestamp_us": 1700000000123456}, ...}, ...]}

With --endpoints it only asks the server for its endpoints (no session):

  {"endpoints": [{"url": "...", "policy": "Basic256Sha256", "mode": "SignAndEncrypt",
                  "tokens": ["UserName"]}, ...]}

Any refusal prints {"connected": false, "error": "..."}.

The namespace is looked up by URI (--namespace-uri), never assumed at an
index; NodeIds are strings in that namespace. Variables are found by browsing
below Objects/Spindle and read --samples times (--interval s apart), or with
--until-changed NODE until that node's value differs from the first sample
(at most --max-samples); --read NODE also reads NodeIds browsing did not find
(a deleted node then reports its bad status).

Security: --policy Basic256Sha256 (default) / Aes128Sha256RsaOaep /
Aes256Sha256RsaPss with SignAndEncrypt and a self-signed client certificate
made in --client-pki; --policy None for the anonymous endpoint. --user and
--password-env select username/password login.
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

ROOT = "Spindle"


def micros(ts):
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    delta = ts - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def status_name(status):
    if status is None:
        return "Good"
    return status_codes.get_name_and_doc(status.value)[0]


def type_name(node_id):
    if node_id.NamespaceIndex == 0 and isinstance(node_id.Identifier, int):
        return ua.ObjectIdNames.get(node_id.Identifier, str(node_id.Identifier))
    return node_id.to_string()


async def describe_variable(node):
    data_type = await node.read_data_type()
    type_definition = await node.read_type_definition()
    units = None
    for prop in await node.get_properties():
        name = await prop.read_browse_name()
        if name.Name == "EngineeringUnits":
            eu = await prop.read_value()
            units = {
                "browse_namespace_index": name.NamespaceIndex,
                "namespace_uri": eu.NamespaceUri,
                "unit_id": eu.UnitId,
                "display_name": eu.DisplayName.Text,
                "description": eu.Description.Text,
                "node_id": prop.nodeid.Identifier,
            }
    return {
        "data_type": type_name(data_type),
        "type_definition": type_definition.Identifier if type_definition else None,
        "units": units,
    }


async def browse(node, prefix, ns, out):
    for child in await node.get_children(refs=ua.ObjectIds.HasComponent):
        name = await child.read_browse_name()
        path = f"{prefix}/{name.Name}"
        node_class = await child.read_node_class()
        nid = child.nodeid
        if nid.NamespaceIndex != ns or not isinstance(nid.Identifier, str):
            raise RuntimeError(f"{path} has NodeId {nid.to_string()}, not a string in ns {ns}")
        if node_class == ua.NodeClass.Variable:
            info = await describe_variable(child)
            info["browse_path"] = path
            info["browse_namespace_index"] = name.NamespaceIndex
            out[nid.Identifier] = info
        elif node_class == ua.NodeClass.Object:
            await browse(child, path, ns, out)


async def list_endpoints(args):
    client = Client(url=args.url, timeout=10)
    try:
        endpoints = await client.connect_and_get_server_endpoints()
    except Exception as e:  # noqa: BLE001 - any refusal is an answer here
        return {"connected": False, "error": f"{type(e).__name__}: {e}"}
    listed = []
    for ep in endpoints:
        listed.append(
            {
                "url": ep.EndpointUrl,
                "policy": ep.SecurityPolicyUri.rsplit("#", 1)[-1],
                "mode": ep.SecurityMode.name,
                "tokens": [t.TokenType.name for t in ep.UserIdentityTokens],
            }
        )
    return {"endpoints": listed}


async def run(args):
    if args.endpoints:
        return await list_endpoints(args)
    client = Client(url=args.url, timeout=10)
    client.application_uri = args.app_uri
    if args.policy != "None":
        pki = Path(args.client_pki)
        cert, key = await client.setup_self_signed_certificate(pki / "client_key.pem", pki / "client_cert.der")
        policy = getattr(security_policies, f"SecurityPolicy{args.policy}")
        await client.set_security(policy, str(cert), str(key), mode=ua.MessageSecurityMode.SignAndEncrypt)
    if args.user:
        client.set_user(args.user)
        client.set_password(os.environ.get(args.password_env, ""))

    result = {"connected": False}
    try:
        await client.connect()
    except Exception as e:  # noqa: BLE001 - any refusal is an answer here
        result["error"] = f"{type(e).__name__}: {e}"
        return result
    result["connected"] = True
    try:
        ns_array = await client.get_namespace_array()
        result["namespace_array"] = ns_array
        if args.namespace_uri not in ns_array:
            result["error"] = f"namespace {args.namespace_uri} not served"
            return result
        ns = ns_array.index(args.namespace_uri)
        result["namespace_index"] = ns

        root = await client.nodes.objects.get_child([ua.QualifiedName(ROOT, ns)])
        variables = {}
        await browse(root, ROOT, ns, variables)
        result["variables"] = variables
        ids = sorted(set(variables) | set(args.read))

        samples = []
        for i in range(args.max_samples):
            if i:
                await asyncio.sleep(args.interval)
            sample = {}
            for node_id in ids:
                node = client.get_node(ua.NodeId(node_id, ns, ua.NodeIdType.String))
                dv = await node.read_data_value(raise_on_bad_status=False)
                value = dv.Value.Value if dv.Value is not None else None
                sample[node_id] = {
                    "value": value if isinstance(value, (bool, int, float, str)) or value is None else str(value),
                    "status": status_name(dv.StatusCode),
                    "source_timestamp_us": micros(dv.SourceTimestamp),
                }
            samples.append(sample)
            if args.until_changed is None and len(samples) >= args.samples:
                break
            if args.until_changed is not None and len(samples) > 1:
                first = samples[0].get(args.until_changed, {}).get("value")
                if sample.get(args.until_changed, {}).get("value") != first:
                    break
        result["samples"] = samples
    finally:
        await client.disconnect()
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--policy", default="Basic256Sha256")
    p.add_argument("--client-pki")
    p.add_argument("--app-uri", default="urn:ironbridge:test-client")
    p.add_argument("--user")
    p.add_argument("--password-env", default="IRONBRIDGE_SIM_OPCUA_PASSWORD")
    p.add_argument("--namespace-uri", default="urn:ironbridge:sim:spindle")
    p.add_argument("--endpoints", action="store_true")
    p.add_argument("--read", action="append", default=[])
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--until-changed", help="sample until this NodeId's value differs from the first sample")
    p.add_argument("--max-samples", type=int, default=100)
    p.add_argument("--interval", type=float, default=0.3)
    args = p.parse_args()
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
