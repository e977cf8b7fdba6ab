"""Independent OPC UA client (python asyncua) that checks the test machine
`opcua_server.py` from the outside, for the harness' self-check.

Prints one JSON object on stdout:

  {"endpoints": [{"url": ..., "mode": "SignAndEncrypt",
                  "policy_uri": "http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256",
                  "user_tokens": ["UserName"], "server_cert_sha1": "..."}],
   "connected": true,                        (or false with "error")
   "namespace_array": ["http://opcfoundation.org/UA/", ...],
   "rounds": [{"nsu=...;s=Line.Speed": {"value": {"float": {"bits": .., "value": ..}},
                                         "variant_type": "Double", "status": "Good",
                                         "status_code": 0, "source_timestamp_us": ..}}, ...],
   "units": {"nsu=...;s=Line.Temperature": {"namespace_uri": .., "unit_id": ..,
                                            "display_name": "°C", "description": ..}},
   "gone": true,                             (with --wait-gone: the node vanished)
   "attempts": {"wrong_password": {"connected": false, "error": "BadUserAccessDenied ..."},
                "anonymous": {...},
                "insecure": {"connected": false, "refused_at": "create_session", "error": ...}}}

Values use the layout's form ({"float": {"bits", "value"}}, {"int": n},
{"uint": n}, {"bool": b}, {"string": s}, {"bytes_hex": h}, "null"), so the
harness compares them with the peer's rules as they are.

Node ids are given as `nsu=URI;s=...`: the namespace index is looked up in the
server's namespace array, as a client must after a server restart.

Rounds: the first reads every --read node; each further round first waits
until --change-node reads a value other than in the previous round.
"""

import argparse
import asyncio
import hashlib
import json
import os
import struct
import sys
from datetime import datetime, timezone
from pathlib import Path

from asyncua import Client, ua
from asyncua.crypto import security_policies
from asyncua.ua import status_codes

CHANGE_DEADLINE_S = 20.0


def micros(ts):
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    delta = ts - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def value_json(variant):
    if variant is None or variant.Value is None:
        return "null"
    vt = variant.VariantType
    v = variant.Value
    if vt in (ua.VariantType.Double, ua.VariantType.Float):
        return {"float": {"bits": struct.unpack(">Q", struct.pack(">d", float(v)))[0], "value": float(v)}}
    if vt == ua.VariantType.Boolean:
        return {"bool": v}
    if vt in (ua.VariantType.SByte, ua.VariantType.Int16, ua.VariantType.Int32, ua.VariantType.Int64):
        return {"int": v}
    if vt in (ua.VariantType.Byte, ua.VariantType.UInt16, ua.VariantType.UInt32, ua.VariantType.UInt64):
        return {"uint": v}
    if vt == ua.VariantType.String:
        return {"string": v}
    if vt == ua.VariantType.ByteString:
        return {"bytes_hex": bytes(v).hex()}
    return {"other": str(v)}


def status_name(status):
    if status is None:
        return "Good", 0
    return status_codes.get_name_and_doc(status.value)[0], status.value


def resolve(text, ns_array):
    head, sep, rest = text.partition(";")
    if sep and head.startswith("nsu="):
        uri = head[4:]
        if uri not in ns_array:
            raise LookupError(f"namespace {uri} not in the server's namespace array")
        return ua.NodeId.from_string(f"ns={ns_array.index(uri)};{rest}")
    return ua.NodeId.from_string(text)


async def secure(client, args, policy):
    if policy == "None":
        return
    if args.client_cert:
        # As given (e.g. a certificate async-opcua made): asyncua's helper
        # below would replace one whose SAN lacks this host's name.
        cert, key = args.client_cert, args.client_key
    else:
        pki = Path(args.client_pki)
        pki.mkdir(parents=True, exist_ok=True)
        cert, key = await client.setup_self_signed_certificate(pki / "probe_key.pem", pki / "probe_cert.der")
    await client.set_security(
        getattr(security_policies, f"SecurityPolicy{policy}"),
        str(cert),
        str(key),
        server_certificate=args.server_cert,
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )


async def connect(args, policy, user, password):
    """A connected client, or the refusal as a string."""
    client = Client(url=args.url, timeout=10)
    client.application_uri = args.app_uri
    client.name = "IronBridge test probe"
    try:
        await secure(client, args, policy)
        if user is not None:
            client.set_user(user)
            client.set_password(password or "")
        await client.connect()
    except Exception as e:  # noqa: BLE001 - any refusal is an answer here
        try:
            await client.disconnect()
        except Exception:  # noqa: BLE001
            pass
        return None, f"{type(e).__name__}: {e}"
    return client, None


async def attempt(args, policy, user, password):
    client, error = await connect(args, policy, user, password)
    if client is None:
        return {"connected": False, "error": error}
    try:
        ns = await client.get_namespace_array()
        return {"connected": True, "namespace_array": ns}
    except Exception as e:  # noqa: BLE001 - a refusal after the session is one too
        return {"connected": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        await client.disconnect()


async def forced_insecure(args):
    """A session over SecurityPolicy None even where the server lists no such
    endpoint (asyncua's client alone would give up on the endpoint list): the
    server itself must refuse, at CreateSession or ActivateSession. Sends the
    user's password in clear if one is given, so that only the channel's
    security can be the reason for a refusal."""
    client = Client(url=args.url, timeout=10)
    client.application_uri = args.app_uri
    stage = "open_secure_channel"
    result = {"connected": False}
    try:
        await client.connect_socket()
        await client.send_hello()
        await client.open_secure_channel()
        stage = "create_session"
        desc = ua.ApplicationDescription()
        desc.ApplicationUri = args.app_uri
        desc.ApplicationName = ua.LocalizedText("forced-none")
        desc.ApplicationType = ua.ApplicationType.Client
        params = ua.CreateSessionParameters()
        params.ClientNonce = os.urandom(32)
        params.ClientDescription = desc
        params.EndpointUrl = args.url
        params.SessionName = "forced-none"
        params.RequestedSessionTimeout = 60000
        await client.uaclient.create_session(params)
        stage = "activate_session"
        aparams = ua.ActivateSessionParameters()
        aparams.LocaleIds = ["en"]
        if args.user is not None:
            token = ua.UserNameIdentityToken()
            token.PolicyId = "username"
            token.UserName = args.user
            token.Password = (args.password or "").encode("utf-8")
        else:
            token = ua.AnonymousIdentityToken()
            token.PolicyId = "anonymous"
        aparams.UserIdentityToken = token
        await client.uaclient.activate_session(aparams)
        stage = "read"
        dv = await client.get_node(ua.NodeId(ua.ObjectIds.Server_NamespaceArray)).read_data_value()
        result["connected"] = True
        result["namespace_array"] = dv.Value.Value
    except Exception as e:  # noqa: BLE001 - any refusal is an answer here
        result["refused_at"] = stage
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        try:
            client.disconnect_socket()
        except Exception:  # noqa: BLE001
            pass
    return result


async def endpoints(args):
    client = Client(url=args.url, timeout=10)
    out = []
    for edp in await client.connect_and_get_server_endpoints():
        out.append(
            {
                "url": edp.EndpointUrl,
                "policy_uri": edp.SecurityPolicyUri,
                "mode": edp.SecurityMode.name.rstrip("_"),
                "user_tokens": [t.TokenType.name for t in edp.UserIdentityTokens],
                "server_cert_sha1": hashlib.sha1(edp.ServerCertificate).hexdigest() if edp.ServerCertificate else None,
                "application_uri": edp.Server.ApplicationUri,
            }
        )
    return out


async def read_round(client, nodes):
    out = {}
    for text, nid in nodes:
        dv = await client.get_node(nid).read_data_value(raise_on_bad_status=False)
        name, code = status_name(dv.StatusCode)
        out[text] = {
            "value": value_json(dv.Value),
            "variant_type": dv.Value.VariantType.name if dv.Value is not None else None,
            "status": name,
            "status_code": code,
            "source_timestamp_us": micros(dv.SourceTimestamp),
        }
    return out


async def run(args):
    result = {"endpoints": await endpoints(args), "attempts": {}}
    client, error = await connect(args, args.policy, args.user, args.password)
    result["connected"] = client is not None
    if client is None:
        result["error"] = error
    else:
        try:
            ns_array = await client.get_namespace_array()
            result["namespace_array"] = ns_array
            nodes = [(t, resolve(t, ns_array)) for t in args.read]
            rounds = [await read_round(client, nodes)]
            change = resolve(args.change_node, ns_array) if args.change_node else None
            for _ in range(1, args.rounds):
                if change is not None:
                    before = rounds[-1].get(args.change_node, {}).get("value")
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + CHANGE_DEADLINE_S
                    while True:
                        dv = await client.get_node(change).read_data_value(raise_on_bad_status=False)
                        if value_json(dv.Value) != before or loop.time() > deadline:
                            break
                        await asyncio.sleep(0.02)
                rounds.append(await read_round(client, nodes))
            result["rounds"] = rounds
            units = {}
            for text in args.unit:
                prop = await client.get_node(resolve(text, ns_array)).get_child(
                    [ua.QualifiedName("EngineeringUnits", 0)]
                )
                eu = await prop.read_value()
                units[text] = {
                    "namespace_uri": eu.NamespaceUri,
                    "unit_id": eu.UnitId,
                    "display_name": eu.DisplayName.Text,
                    "description": eu.Description.Text,
                }
            result["units"] = units
            if args.wait_gone:
                # Until the node reads BadNodeIdUnknown (deleted by the server).
                gone = resolve(args.wait_gone, ns_array)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + CHANGE_DEADLINE_S
                result["gone"] = False
                while loop.time() < deadline:
                    dv = await client.get_node(gone).read_data_value(raise_on_bad_status=False)
                    if dv.StatusCode is not None and dv.StatusCode.value == ua.StatusCodes.BadNodeIdUnknown:
                        result["gone"] = True
                        break
                    await asyncio.sleep(0.05)
        finally:
            await client.disconnect()
    if args.try_password is not None:
        result["attempts"]["wrong_password"] = await attempt(args, args.policy, args.user, args.try_password)
    if args.try_anonymous:
        result["attempts"]["anonymous"] = await attempt(args, args.policy, None, None)
    if args.try_insecure:
        result["attempts"]["insecure"] = await forced_insecure(args)
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--policy", default="Basic256Sha256")
    p.add_argument("--client-pki", help="where the probe keeps its self-signed certificate")
    p.add_argument("--client-cert", help="use this client certificate (DER) as it is, with --client-key")
    p.add_argument("--client-key")
    p.add_argument("--server-cert", help="pin the server's certificate (else taken from the endpoints)")
    p.add_argument("--app-uri", default="urn:ironbridge:test:probe")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--read", action="append", default=[])
    p.add_argument("--unit", action="append", default=[])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--change-node")
    p.add_argument("--wait-gone", help="wait until this node reads BadNodeIdUnknown")
    p.add_argument("--try-password", help="also try to log in with this (wrong) password")
    p.add_argument("--try-anonymous", action="store_true")
    p.add_argument("--try-insecure", action="store_true", help="also force a session over SecurityPolicy None")
    args = p.parse_args()
    if not args.client_pki and not args.client_cert and args.policy != "None":
        p.error("--client-pki or --client-cert is needed for a secure policy")
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
