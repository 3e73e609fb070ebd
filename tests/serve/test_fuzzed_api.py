"""The API fuzzed from its own OpenAPI document (schemathesis, `tests/serve/support.py: fuzz`): every
operation /openapi.json lists, with values its schemas allow and values they don't, gets no server
error, and every response conforms to what the document says (status codes, content types, bodies).
Bounded: a fixed number of examples per operation. This module fuzzes the Qwen-Image-Edit app;
tests/serve/test_instruct_pix2pix_api.py its InstructPix2Pix app."""

import pytest

from tests.serve.support import FUZZ_MODES, fuzz


@pytest.mark.parametrize("mode", FUZZ_MODES)
def test_no_server_error_and_every_response_as_documented(served, mode):
    seconds = fuzz(served, mode)
    print(f"\nfuzzed the Qwen-Image-Edit app ({mode.value}): {len(seconds)} requests in {sum(seconds):.1f}s")
