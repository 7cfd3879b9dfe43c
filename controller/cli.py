"""The `kdigits` command line (DESIGN.md's CLI contract); everything but `serve`, `demo` and
`data` talks to the REST API at KDIGITS_URL (default http://127.0.0.1:5000) with KDIGITS_TOKEN.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from controller.client import ApiClient, ClientError

RESIZE_MODES = ("squash", "crop", "fill", "half_crop")
ENCODINGS = ("none", "png", "jpg")
SOLVERS = ("sgd", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "adamw")
GROUP_LABEL = "kdigits.io/group"


class UsageError(Exception):
    pass


# ---------------------------------------------------------------------------- output


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "-"
    created = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int((datetime.now(UTC) - created).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _row(obj: dict[str, Any]) -> list[str]:
    status = obj.get("status") or {}
    phase = status.get("phase", "Pending")
    progress = f"{float(status.get('progress') or 0) * 100:.0f}%"
    note = status.get("waitingFor") or status.get("message") or ""
    if obj.get("kind") == "Model":
        metrics = status.get("metrics") or {}
        extra = f"epoch {status.get('epoch', 0):g}"
        if "valAccuracy" in metrics:
            extra += f", val acc {metrics['valAccuracy']:.4g}"
    else:
        images = status.get("images") or {}
        extra = ", ".join(f"{k} {v}" for k, v in images.items()) or "-"
    return [
        obj["metadata"]["name"],
        phase,
        progress,
        extra,
        _age(obj["metadata"].get("creationTimestamp")),
        note[:60],
    ]


def print_table(items: list[dict[str, Any]]) -> None:
    header = ["NAME", "PHASE", "PROGRESS", "DETAILS", "AGE", "MESSAGE"]
    rows = [header] + [_row(o) for o in items]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def emit(obj: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(obj, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(obj, sort_keys=False).rstrip())
    elif isinstance(obj, list):
        print_table(obj)
    elif isinstance(obj, dict) and "metadata" in obj:
        print_table([obj])
    else:
        print(yaml.safe_dump(obj, sort_keys=False).rstrip())


# ---------------------------------------------------------------------------- bodies


def load_spec_file(path: str, kind: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    body = yaml.safe_load(text)
    if not isinstance(body, dict):
        raise UsageError(f"{path}: expected one {kind} object (a mapping)")
    if body.get("kind", kind) != kind:
        raise UsageError(f"{path}: kind is {body.get('kind')!r}, expected {kind}")
    body.setdefault("kind", kind)
    body.pop("status", None)
    return body


def _metadata(args: argparse.Namespace) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": args.name}
    if getattr(args, "group", None):
        meta["labels"] = {GROUP_LABEL: args.group}
    return meta


def _abs(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else None


def dataset_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        body = load_spec_file(args.file, "Dataset")
        if args.name:
            body.setdefault("metadata", {})["name"] = args.name
        return body
    if not args.name or not args.train_dir:
        raise UsageError("dataset create needs NAME and --train-dir (or -f SPEC.yaml)")
    folder = {"train": _abs(args.train_dir)}
    if args.val_dir:
        folder["val"] = _abs(args.val_dir)
    if args.test_dir:
        folder["test"] = _abs(args.test_dir)
    spec: dict[str, Any] = {"source": {"folder": folder}, "image": {}, "split": {}}
    if args.channels is not None:
        spec["image"]["channels"] = args.channels
    if args.size:
        try:
            width, height = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise UsageError(f"--size must be WxH, got {args.size!r}") from None
        spec["image"].update(width=width, height=height)
    if args.resize_mode:
        spec["image"]["resizeMode"] = args.resize_mode
    if args.val_percent is not None:
        spec["split"]["valPercent"] = args.val_percent
    if args.test_percent is not None:
        spec["split"]["testPercent"] = args.test_percent
    if args.encoding:
        spec["encoding"] = args.encoding
    return {"kind": "Dataset", "metadata": _metadata(args), "spec": spec}


def model_body(args: argparse.Namespace) -> dict[str, Any]:
    if args.file:
        body = load_spec_file(args.file, "Model")
        if args.name:
            body.setdefault("metadata", {})["name"] = args.name
        return body
    if not args.name or not args.dataset or not args.network:
        raise UsageError("model create needs NAME, --dataset and --network (or -f SPEC.yaml)")
    spec: dict[str, Any] = {
        "dataset": args.dataset,
        "network": {"standard": args.network},
        "training": {},
        "solver": {},
    }
    if args.epochs is not None:
        spec["training"]["epochs"] = args.epochs
    if args.batch_size is not None:
        spec["training"]["batchSize"] = args.batch_size
    if args.lr is not None:
        spec["solver"]["baseLr"] = args.lr
    if args.solver:
        spec["solver"]["type"] = args.solver
    if args.gpus:
        spec["resources"] = {"gpusPerWorker": args.gpus}
    return {"kind": "Model", "metadata": _metadata(args), "spec": spec}


# ---------------------------------------------------------------------------- commands


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(args.url, args.token, args.namespace)


def cmd_resource(args: argparse.Namespace) -> int:
    plural = "datasets" if args.resource == "dataset" else "models"
    client = _client(args)
    action = args.action
    if action == "create":
        body = dataset_body(args) if plural == "datasets" else model_body(args)
        obj = client.create(plural, body)
        name = obj["metadata"]["name"]
        if args.wait:
            return _wait(client, plural, name, args.output)
        emit(obj, args.output)
        return 0
    if action == "list":
        emit(client.list(plural, getattr(args, "group", None)), args.output)
        return 0
    if action == "get":
        emit(client.get(plural, args.name), args.output if args.output != "table" else "yaml")
        return 0
    if action == "delete":
        client.delete(plural, args.name)
        print(f"{args.resource} {args.name} deleted")
        return 0
    if action == "abort":
        emit(client.abort(plural, args.name), args.output)
        return 0
    if action == "logs":
        for chunk in client.logs(plural, args.name, follow=args.follow):
            sys.stdout.write(chunk)
            sys.stdout.flush()
        return 0
    if action == "wait":
        return _wait(client, plural, args.name, args.output)
    raise UsageError(f"unknown action {action}")


def _wait(client: ApiClient, plural: str, name: str, output: str) -> int:
    from controller.progress import wait

    obj = wait(client, plural, name, show=output == "table")
    if output != "table":
        emit(obj, output)
    else:
        print(summary(client, obj))
    return 0 if obj["status"]["phase"] == "Succeeded" else 1


def summary(client: ApiClient, obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    name, phase = obj["metadata"]["name"], status.get("phase")
    lines = [f"{obj['kind']} {name}: {phase}"]
    if status.get("message"):
        lines.append(f"  message: {status['message']}")
    if obj["kind"] == "Dataset" and status.get("images"):
        images = ", ".join(f"{k} {v}" for k, v in status["images"].items())
        lines.append(
            f"  images: {images}; classes: {status.get('classes')}; "
            f"skipped: {status.get('skipped') or 0}"
        )
    if obj["kind"] == "Model":
        metrics = status.get("metrics") or {}
        lines.append(f"  epoch: {status.get('epoch', 0):g}")
        for key in sorted(metrics):
            lines.append(f"  {key}: {metrics[key]:.6g}")
    return "\n".join(lines)


def _print_errors(answer: dict[str, Any]) -> None:
    """The images of a list that could not be read, with the reason."""
    for path, reason in answer.get("errors", {}).items():
        print(f"{path}\terror: {reason}")


def _print_predictions(answer: dict[str, Any]) -> None:
    for label, probability in answer["predictions"]:
        print(f"{label}\t{probability * 100:.2f}%")


def _print_classifications(answer: dict[str, Any]) -> None:
    for path, predictions in answer["classifications"].items():
        label, probability = predictions[0]
        print(f"{path}\t{label}\t{probability * 100:.2f}%")
    _print_errors(answer)
    if answer.get("top1Accuracy") is not None:
        print(
            f"top-1 accuracy {answer['top1Accuracy'] * 100:.2f}%, "
            f"top-5 accuracy {answer['top5Accuracy'] * 100:.2f}% "
            f"over {answer['evaluated']} labelled images"
        )


def _print_top_n(answer: dict[str, Any]) -> None:
    """Each class, then its images, most confident first."""
    for category in answer["topN"]:
        print(category["label"])
        for image in category["images"]:
            print(f"  {image['path']}\t{image['probability'] * 100:.2f}%")
    _print_errors(answer)


TABLES = {
    "classify": _print_predictions,
    "classify-many": _print_classifications,
    "top-n": _print_top_n,
}


def _classify(client: ApiClient, args: argparse.Namespace) -> dict[str, Any]:
    """The answer of `model classify`, `classify-many` or `top-n`."""
    if args.action == "classify":
        return client.classify(
            args.name, args.image, on_server=args.server_path, epoch=args.epoch,
            top_k=args.top_k, visualize=args.visualize,
        )  # fmt: skip
    folder = _abs(args.folder)
    if args.action == "top-n":
        return client.classify_many(
            args.name, args.list, folder=folder, epoch=args.epoch, top_n=args.top_n
        )
    return client.classify_many(
        args.name, args.list, folder=folder, epoch=args.epoch, top_k=args.top_k
    )


def cmd_use(args: argparse.Namespace) -> int:
    """`kdigits model classify|classify-many|top-n|download|make-pretrained`."""
    client = _client(args)
    action = args.action
    if action in TABLES:
        answer = _classify(client, args)
        if args.output == "table":
            TABLES[action](answer)
        else:
            emit(answer, args.output)
        return 0
    if action == "download":
        path = client.download(args.name, epoch=args.epoch, fmt=args.format, out=args.file)
        print(path)
        return 0
    if action == "make-pretrained":
        obj = client.make_pretrained(args.name, pretrained_name=args.as_name, epoch=args.epoch)
        emit(obj, args.output)
        return 0
    raise UsageError(f"unknown action {action}")


def cmd_pretrained(args: argparse.Namespace) -> int:
    """`kdigits pretrained upload|list|get|delete`."""
    client = _client(args)
    plural = "pretrained-models"
    if args.action == "upload":
        if bool(args.archive) == bool(args.weights):
            raise UsageError("pretrained upload needs --archive FILE, or --weights and --network")
        image: dict[str, Any] = {}
        if args.channels is not None:
            image["channels"] = args.channels
        if args.size:
            try:
                image["width"], image["height"] = (int(v) for v in args.size.lower().split("x"))
            except ValueError:
                raise UsageError(f"--size must be WxH, got {args.size!r}") from None
        if args.resize_mode:
            image["resize_mode"] = args.resize_mode
        network = args.network
        if network and network.startswith("@"):  # @layers.json: a layer list from a file
            network = Path(network[1:]).read_text()
        obj = client.upload_pretrained(
            args.name, archive=args.archive, weights=args.weights, network=network,
            labels=args.labels, mean=args.mean, image=image,
        )  # fmt: skip
        emit(obj, args.output)
        return 0
    if args.action == "list":
        emit(client.list(plural), args.output)
        return 0
    if args.action == "get":
        emit(client.get(plural, args.name), args.output if args.output != "table" else "yaml")
        return 0
    if args.action == "delete":
        client.delete(plural, args.name)
        print(f"pretrained model {args.name} deleted")
        return 0
    raise UsageError(f"unknown action {args.action}")


def cmd_serve(args: argparse.Namespace) -> int:
    from controller.serve import main as serve_main

    return serve_main(args.host, args.port, kubernetes=args.kubernetes)


def cmd_demo(args: argparse.Namespace) -> int:
    from controller.demo import run_demo

    return run_demo(epochs=args.epochs, keep=args.keep, port=args.port, download=args.download)


def cmd_data(args: argparse.Namespace) -> int:
    from jobs import mnist

    argv = [str(args.dir)]
    if args.offline:
        argv.append("--offline")
    if args.force:
        argv.append("--force")
    if args.mirror:
        argv += ["--mirror", args.mirror]
    return int(mnist.main(argv))


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=None, help="REST API (default: KDIGITS_URL)")
    connection.add_argument("--token", default=None, help="bearer token (default: KDIGITS_TOKEN)")
    connection.add_argument("-n", "--namespace", default="default")
    common = argparse.ArgumentParser(add_help=False, parents=[connection])
    common.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")

    parser = argparse.ArgumentParser(prog="kdigits", description="DIGITS on Kubernetes + Ray")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API, the reconciler and a local Ray head")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument(
        "--kubernetes",
        action="store_true",
        help="cluster mode: custom resources, the kopf operator, Kubernetes RBAC on REST "
        "(also KDIGITS_KUBERNETES=true)",
    )
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="the whole DIGITS flow on MNIST, locally")
    demo.add_argument("--epochs", type=int, default=3)
    demo.add_argument("--port", type=int, default=5000)
    demo.add_argument("--keep", action="store_true", help="keep serving after the demo")
    demo.add_argument("--download", action="store_true", help="download full MNIST")
    demo.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="example data")
    data_sub = data.add_subparsers(dest="dataset_name", required=True)
    mnist = data_sub.add_parser("mnist", help="write MNIST as DIR/train and DIR/test folders")
    mnist.add_argument("dir", type=Path)
    mnist.add_argument("--offline", action="store_true", help="use the shipped 10k digits")
    mnist.add_argument("--force", action="store_true")
    mnist.add_argument("--mirror", default=None)
    mnist.set_defaults(func=cmd_data)

    for resource in ("dataset", "model"):
        res = sub.add_parser(resource, help=f"{resource}s")
        actions = res.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", parents=[common])
        create.add_argument("name", nargs="?")
        create.add_argument("-f", "--file", help="a whole object as YAML or JSON (- for stdin)")
        create.add_argument("--group", help=f"label {GROUP_LABEL}")
        create.add_argument("--wait", action="store_true", help="follow it with a progress bar")
        if resource == "dataset":
            create.add_argument("--train-dir")
            create.add_argument("--val-dir")
            create.add_argument("--test-dir")
            create.add_argument("--channels", type=int, choices=[1, 3])
            create.add_argument("--size", help="WxH, e.g. 28x28")
            create.add_argument("--resize-mode", choices=RESIZE_MODES)
            create.add_argument("--val-percent", type=float)
            create.add_argument("--test-percent", type=float)
            create.add_argument("--encoding", choices=ENCODINGS)
        else:
            create.add_argument("--dataset")
            create.add_argument("--network", help="lenet, alexnet, googlenet, or torchvision's")
            create.add_argument("--epochs", type=int)
            create.add_argument("--batch-size", type=int)
            create.add_argument("--lr", type=float)
            create.add_argument("--solver", choices=SOLVERS)
            create.add_argument("--gpus", type=float, help="GPUs per worker")
        listing = actions.add_parser("list", parents=[common])
        listing.add_argument("--group")
        for action in ("get", "delete", "abort", "wait"):
            actions.add_parser(action, parents=[common]).add_argument("name")
        logs = actions.add_parser("logs", parents=[common])
        logs.add_argument("name")
        logs.add_argument("-f", "--follow", action="store_true")
        res.set_defaults(func=cmd_resource, resource=resource)
        if resource == "model":
            _model_use_parsers(actions, common, connection)

    pre = sub.add_parser("pretrained", help="pretrained models")
    pre_actions = pre.add_subparsers(dest="action", required=True)
    upload = pre_actions.add_parser("upload", parents=[common])
    upload.add_argument("name")
    upload.add_argument("--archive", help="a kdigits download archive (.tar.gz or .zip)")
    upload.add_argument("--weights", help="model.safetensors, or a state dict (.pt)")
    upload.add_argument("--network", help="a network name, or @FILE with a JSON layer list")
    upload.add_argument("--labels", help="labels.txt (may be empty)")
    upload.add_argument("--mean", help="mean.npy")
    upload.add_argument("--channels", type=int, choices=[1, 3])
    upload.add_argument("--size", help="WxH, e.g. 28x28")
    upload.add_argument("--resize-mode", choices=RESIZE_MODES)
    pre_actions.add_parser("list", parents=[common])
    for action in ("get", "delete"):
        pre_actions.add_parser(action, parents=[common]).add_argument("name")
    pre.set_defaults(func=cmd_pretrained)
    return parser


def _model_use_parsers(
    actions: Any, common: argparse.ArgumentParser, connection: argparse.ArgumentParser
) -> None:
    """`model classify|classify-many|download|make-pretrained` (DESIGN.md's CLI contract), and
    `model top-n` (DIGITS' Top N page)."""
    classify = actions.add_parser("classify", parents=[common], help="classify one image")
    classify.add_argument("name")
    classify.add_argument("image", help="a local file, a URL, or with --server-path a path")
    classify.add_argument(
        "--server-path", action="store_true", help="IMAGE is a path inside the server's roots"
    )
    classify.add_argument("--visualize", action="store_true", help="per-layer statistics")
    many = actions.add_parser("classify-many", parents=[common], help="classify an image list")
    top = actions.add_parser(
        "top-n", parents=[common], help="per class, the images of a list most surely of it"
    )
    for parser in (many, top):
        parser.add_argument("name")
        parser.add_argument("list", help="a local file of `path [label]` lines")
        parser.add_argument("--folder", help="folder (on the server) relative list paths are under")
    # `-n` is --namespace on every command, so N is given as --top-n (like classify's --top-k)
    top.add_argument(
        "--top-n", type=int, default=9, metavar="N", help="images per class (DIGITS: 9)"
    )
    for parser in (classify, many, top):
        parser.add_argument("--epoch", type=float, help="snapshot epoch (default: the last)")
        parser.set_defaults(func=cmd_use)
    for parser in (classify, many):
        parser.add_argument("--top-k", type=int, default=5)
    download = actions.add_parser("download", parents=[connection], help="download the model")
    download.add_argument("name")
    download.add_argument("--epoch", type=float)
    download.add_argument("--format", choices=["tar.gz", "zip"], default="tar.gz")
    download.add_argument("-o", "--file", help="where to save it (default: the server's name)")
    download.set_defaults(func=cmd_use, output="table")
    make = actions.add_parser("make-pretrained", parents=[common], help="publish a snapshot")
    make.add_argument("name")
    make.add_argument("--name", dest="as_name", help="the pretrained model's name")
    make.add_argument("--epoch", type=float)
    make.set_defaults(func=cmd_use)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ClientError as error:
        print(f"error: {error.reason}", file=sys.stderr)
        return 1
    except (UsageError, OSError, yaml.YAMLError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
