"""The KServe v2 (Triton) inference protocol of `fastshower serve`: the served signature, the
request decoder and the response encoder (JSON tensors and the binary tensor extension)."""

from __future__ import annotations

import json

import numpy as np

from fastshower.simhits import eta_phi_direction

DTYPES = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
          "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
          "UINT64": np.uint64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
INPUTS = {"energy": ("FP32", [-1]), "direction": ("FP32", [-1, 3]), "pdg": ("INT32", [-1]),
          "position": ("FP32", [-1, 3]), "seed": ("INT64", [1])}
OPTIONAL = ("position", "seed")
OUTPUTS = {"hit_shower": ("INT64", [-1]), "hit_cell": ("INT64", [-1]),
           "hit_energy": ("FP32", [-1])}


class BadRequest(Exception):
    """A request the server refuses with 400 and this message."""


def decode_tensors(body: bytes, header_length: int | None) -> tuple[dict, dict]:
    """(request JSON, name -> array) from a KServe v2 request body (JSON or binary extension)."""
    head = body if header_length is None else body[:header_length]
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the request is not valid JSON: {err}") from None
    except RecursionError:
        raise BadRequest("the request JSON is nested too deeply") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise BadRequest("the request needs an 'inputs' list")
    offset = 0 if header_length is None else header_length
    arrays = {}
    for t in request["inputs"]:
        if not isinstance(t, dict) or not {"name", "shape", "datatype"} <= set(t):
            raise BadRequest("every input needs name, shape and datatype")
        name, dtype = t["name"], DTYPES.get(t["datatype"])
        if dtype is None:
            raise BadRequest(f"input {name}: datatype {t['datatype']!r} is not supported")
        try:
            shape = [int(s) for s in t["shape"]]
            size = (t.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                arrays[name] = np.frombuffer(body[offset:offset + size], dtype).reshape(shape)
                offset += size
            else:
                arrays[name] = np.asarray(t["data"], dtype=dtype).reshape(shape)
        except (KeyError, TypeError, ValueError) as err:
            raise BadRequest(f"input {name}: data do not match shape {t['shape']} and "
                             f"datatype {t['datatype']} ({err})") from None
    return request, arrays


def encode_outputs(request: dict, outputs: dict[str, np.ndarray], model: str,
                   parameters: dict) -> tuple[bytes, dict]:
    """The response body and headers: binary tensors where the request asked for them."""
    asked = {o.get("name"): (o.get("parameters") or {}).get("binary_data", False)
             for o in request.get("outputs") or []}
    unknown = set(asked) - set(outputs)
    if unknown:
        raise BadRequest(f"unknown output(s) {sorted(unknown)}; this model has {list(OUTPUTS)}")
    binary_all = bool((request.get("parameters") or {}).get("binary_data_output", False))
    names = list(asked) or list(outputs)
    tensors, blobs = [], []
    for name in names:
        a = outputs[name]
        t = {"name": name, "datatype": OUTPUTS[name][0], "shape": list(a.shape)}
        if asked.get(name, binary_all):
            raw = np.ascontiguousarray(a).tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            t["data"] = a.tolist()
        tensors.append(t)
    response = {"model_name": model, "model_version": "1", "outputs": tensors,
                "parameters": parameters}
    if "id" in request:
        response["id"] = request["id"]
    head = json.dumps(response).encode()
    if not blobs:
        return head, {"Content-Type": "application/json"}
    return head + b"".join(blobs), {"Content-Type": "application/octet-stream",
                                    "Inference-Header-Content-Length": str(len(head))}


def signature(spec: dict) -> str:
    return ", ".join(f"{k} {d}{s}" for k, (d, s) in spec.items())


def client_inputs(energy_mev, pdg, eta: float = 2.0, phi: float = np.pi / 2,
                  seed: int | None = None) -> list:
    """The request inputs of showers from the origin along (eta, phi), as Triton HTTP client
    tensors: ``client.infer(name, client_inputs([20e3], 22, seed=1))``."""
    import tritonclient.http as http

    energy = np.atleast_1d(np.asarray(energy_mev, np.float32))
    direction = eta_phi_direction(eta, phi)
    arrays = {"energy": energy,
              "direction": np.tile(direction, (len(energy), 1)).astype(np.float32),
              "pdg": np.full(len(energy), pdg, np.int32)}
    if seed is not None:
        arrays["seed"] = np.array([seed], np.int64)
    tensors = []
    for name, a in arrays.items():
        t = http.InferInput(name, list(a.shape), INPUTS[name][0])
        t.set_data_from_numpy(a)
        tensors.append(t)
    return tensors
