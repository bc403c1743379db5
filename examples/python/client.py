#!/usr/bin/env python3
"""Minimal Python client for the PaliGemma gateway.

Generates the gRPC stubs from proto/ on first use (needs `pip install grpcio grpcio-tools`), then
streams a generation for one image:

    python3 examples/python/client.py --image tests/fixtures/images/photo.jpg --prompt "caption en"
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
GEN = os.path.join(HERE, "generated")


def ensure_stubs():
    """Runs grpc_tools.protoc on proto/paligemma/v1/*.proto into examples/python/generated/."""
    marker = os.path.join(GEN, "paligemma", "v1", "gateway_pb2_grpc.py")
    if not os.path.exists(marker):
        os.makedirs(GEN, exist_ok=True)
        protos = [os.path.join("paligemma", "v1", f"{n}.proto") for n in ("common", "vision", "decoder", "gateway")]
        subprocess.check_call(
            [sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
             f"--python_out={GEN}", f"--grpc_python_out={GEN}", *protos]
        )
    sys.path.insert(0, GEN)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default="127.0.0.1:50051")
    parser.add_argument("--image", required=True)
    parser.add_argument("--prompt", default="caption en")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--unary", action="store_true", help="use GenerateUnary instead of streaming")
    args = parser.parse_args()

    ensure_stubs()
    import grpc
    from paligemma.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    with open(args.image, "rb") as f:
        image = f.read()
    request = gateway_pb2.GenerateRequest(
        image=image,
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        sampling=common_pb2.SamplingParams(temperature=args.temperature),
    )
    with grpc.insecure_channel(args.address) as channel:
        stub = gateway_pb2_grpc.PaliGemmaStub(channel)
        models = stub.ListModels(gateway_pb2.ListModelsRequest())
        print("models:", ", ".join(m.id for m in models.models), file=sys.stderr)
        if args.unary:
            result = stub.GenerateUnary(request)
            print(result.text)
            print(f"tokens: {list(result.token_ids)}", file=sys.stderr)
            print(f"finish: {common_pb2.FinishReason.Name(result.finish_reason)}", file=sys.stderr)
            return
        tokens = []
        for response in stub.Generate(request):
            print(response.text, end="", flush=True)
            tokens.extend(response.token_ids)
            if response.finish_reason:
                print()
                print(f"tokens: {tokens}", file=sys.stderr)
                print(f"finish: {common_pb2.FinishReason.Name(response.finish_reason)}, "
                      f"usage: {response.usage.prompt_tokens} prompt + {response.usage.generated_tokens} generated",
                      file=sys.stderr)


if __name__ == "__main__":
    main()
