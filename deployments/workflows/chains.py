"""Chained edits: a request's `chain` lists further instructions, each applied to the previous one's
output, in one call (online) or one row (bulk).

`chain` is JSON text (a form field, a manifest column): a list whose entries are an instruction, or an
object with its `prompt` and any request field of its own (e.g. `seed`, `num_inference_steps`,
`negative_prompt`, `lora`, `guard`) but for those of the whole request (IMAGE_OF_THE_REQUEST).
Link 1 is the request itself (its `prompt`, images, `mask`, `placement`); every later link edits the
previous link's image, with the request's values where it sets none (its `seed` included: image i
of `n` uses its link's seed + i). Intermediate images are PNG (lossless); the last is the request's
`output_format`. Every link is validated before any work starts; a refusal names `chain[k]`.
"""

from typing import Any

from deployments.errors import EditError, InvalidInputError
from deployments.request.binding import parse

IMAGE_OF_THE_REQUEST = ("image", "mask", "placement", "chain", "n", "output_format", "output_compression")
NOT_INHERITED = ("mask", "placement", "chain")  # they shape link 1 only


def chain_links(model, parameters, values: dict[str, Any]) -> tuple:
    """Every link's parameters, validated by `model` (the bound request model): link 1 is `parameters`
    (validated from `values`), each later link the request's `values` with the link's own. A later
    link's image is a placeholder until the previous link's image exists (`with_input`). The work
    limit holds for the whole request: every link, every image, every guard retry."""
    if not parameters.chain:
        return (parameters,)
    if len(parameters.chain) + 1 > model.limits.max_chain_links:
        raise InvalidInputError("chain", f"a request may have at most {model.limits.max_chain_links} links in all, got {len(parameters.chain) + 1}")
    fields = type(parameters).model_fields  # the request's parameters, not how the call is answered
    inherited = {name: value for name, value in values.items() if name in fields and name not in NOT_INHERITED}
    inherited.update(seed=parameters.seed, image=parameters.image[:1])
    links = [parameters.model_copy(update={"chain": ()})]
    for k, link in enumerate(parameters.chain):
        given = {"prompt": link} if isinstance(link, str) else link
        if not isinstance(given.get("prompt"), str):
            raise InvalidInputError("chain", f"chain[{k}]: give an instruction, or an object with a prompt; got {link!r}")
        fixed = sorted(set(given) & set(IMAGE_OF_THE_REQUEST))
        if fixed:
            raise InvalidInputError("chain", f"chain[{k}]: {', '.join(fixed)} belong to the whole request, not to a link")
        foreign = sorted(set(given) & (set(model.model_fields) - set(fields)))
        if foreign:  # the call's options (`model`, `stream`, ...): a link can't change them (other names: parse says)
            raise InvalidInputError(
                "chain", f"chain[{k}]: {', '.join(map(repr, foreign))} can't be set in a link; a link sets its prompt and request "
                f"parameters (its adapters with `lora`): {', '.join(name for name in fields if name not in IMAGE_OF_THE_REQUEST)}",
            )
        try:
            links.append(parse(model, {**inherited, **given}))
        except InvalidInputError as e:
            raise InvalidInputError("chain", f"chain[{k}].{e.message}") from None
    work = sum(link.work for link in links)
    if work > model.limits.max_work:
        raise InvalidInputError(
            "chain", f"the whole request may cost at most {model.limits.max_work} (n x num_inference_steps x output pixels, "
            f"over all {len(links)} links, x 2 where a guard retries), got {work}; fewer links, steps or images, or a smaller size",
        )
    lossless = {"output_format": "png", "output_compression": 100}  # what the next link reads
    return tuple(link.model_copy(update=lossless) for link in links[:-1]) + (links[-1],)


def with_input(link, image: bytes):
    """A later link's parameters with the previous link's image as its input."""
    return link.model_copy(update={"image": [image]})


def in_link(error: EditError, k: int, links: int) -> EditError:
    """`error` of link k (0-based, > 0) said as that link's: its message and param name `chain[k - 1]`."""
    # Ray raises a remote error as a subclass of its own and the error's class: keep the error's class
    kind = next(cls for cls in type(error).__mro__ if issubclass(cls, EditError) and cls.__module__.startswith("deployments."))
    named = kind.__new__(kind)
    EditError.__init__(named, f"{link_name(k, links)}: {error.message}", f"chain[{k - 1}]")
    return named


def link_name(k: int, links: int) -> str:
    """How messages name link k (0-based, > 0) of a chain of `links`."""
    return f"chain[{k - 1}] (link {k + 1} of {links})"
