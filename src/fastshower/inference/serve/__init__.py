"""`fastshower serve`: an exported generator behind the KServe v2 inference protocol over HTTP,
the protocol NVIDIA Triton speaks, so Triton's own clients (``tritonclient.http``) work unchanged.

Endpoints: GET /v2/health/live, /v2/health/ready, /v2, /v2/models/{m}, /v2/models/{m}/ready
(also under /versions/{v}), POST /v2/models/{m}/infer, with JSON tensors or the binary tensor
extension (the ``Inference-Header-Content-Length`` header) in both directions.
The served signature is the physics one; the noise the ONNX graph takes is drawn here from the
request's ``seed`` (or fresh entropy, returned in the response parameters), so a request gives
the same showers however it was batched with others:
  inputs  energy FP32 [n] MeV, direction FP32 [n,3], pdg INT32 [n], position FP32 [n,3] mm
          (optional, default the origin), seed INT64 [1] (optional)
  outputs hit_shower INT64 [h], hit_cell INT64 [h], hit_energy FP32 [h] MeV
Concurrent requests are batched: one ONNX Runtime call runs the showers of all requests waiting
(up to ``max_batch`` showers, after at most ``max_delay_ms``).

Modules: ``protocol`` (signature, decoder, encoder), ``batcher``, ``app`` (checks, routes,
``serve``), ``triton`` (model repository).
"""

from fastshower.inference.serve.app import ServeConfig, ShowerService, make_app, serve
from fastshower.inference.serve.protocol import client_inputs, decode_tensors, encode_outputs
from fastshower.inference.serve.triton import triton_repository

__all__ = ["ServeConfig", "ShowerService", "client_inputs", "decode_tensors", "encode_outputs",
           "make_app", "serve", "triton_repository"]
