"""``python -m shoal.broker --config cluster.yaml --id N``: one broker process."""

from __future__ import annotations

import argparse
import sys

from shoal.router.server.logs import FORMATS, LEVELS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.broker", description="Run one shoal broker.")
    parser.add_argument("--config", default="cluster.yaml", help="topology file (default ./cluster.yaml)")
    parser.add_argument("--id", type=int, required=True, help="this broker's id in the topology")
    parser.add_argument("--listen", help="HOST:PORT to bind (default: the host and port of the broker's URL)")
    parser.add_argument("--data-dir", help="where logs are stored (default: the broker's data_dir)")
    parser.add_argument("--log-level", default="info", choices=LEVELS)
    parser.add_argument("--log-format", default="text", choices=FORMATS)
    parser.add_argument("--tls-cert", help="PEM certificate chain to serve HTTPS with (default: tls.cert_file)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert (default: tls.key_file)")
    args = parser.parse_args(argv)

    from shoal.broker.main import run
    from shoal.router.server.tls import TlsError
    from shoal.router.topology import TopologyError

    try:
        run(args.config, args.id, listen=args.listen, data_dir=args.data_dir,
            log_level=args.log_level, log_format=args.log_format, tls_cert=args.tls_cert, tls_key=args.tls_key)
    except (TopologyError, TlsError) as exc:
        print(f"unable to start broker {args.id}: {exc}", file=sys.stderr)
        return 1
    except KeyError:
        print(f"unable to start broker {args.id}: no broker with id {args.id} in {args.config}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"unable to start broker {args.id}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
