"""A minimal Open Inference Protocol engine over HTTPS that requires a client
certificate (mutual TLS), for the remote-inference TLS test.

    python kserve_tls_engine.py --port P --cert server.pem --key server.key --client-ca ca.pem

It answers `GET /v2/models/<m>/ready` with 200 and `POST .../infer` with an
FP32 output of shape [rows, 1] holding each row's sum. MLServer itself serves plain HTTP; TLS normally sits in
front of it (an ingress or a proxy), which this stands for.
"""

import argparse
import http.server
import json
import ssl
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.endswith("/ready"):
            self._answer(200, {})
        else:
            self._answer(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        request = json.loads(self.rfile.read(length))
        tensor = request["inputs"][0]
        rows, cols = tensor["shape"]
        data = tensor["data"]
        sums = [sum(data[r * cols:(r + 1) * cols]) for r in range(rows)]
        self._answer(
            200,
            {"outputs": [{"name": "sum", "shape": [rows, 1], "datatype": "FP32", "data": sums}]},
        )

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca", required=True)
    args = parser.parse_args()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.load_verify_locations(args.client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
