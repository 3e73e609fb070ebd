"""A request's links (deployments/workflows/chains.py) through the stages, one after the other for each image:
each link is an edit of its own (serve/stage_calls.py: encoded, denoised, decoded and guarded like
any request, batching with other traffic), whose image is the next link's input. A request without a
chain is one link.
"""

import asyncio
import dataclasses
import time
from collections.abc import Callable

from deployments.contracts import EditedImage, EditRequest
from deployments.errors import EditError
from deployments.request.fields import EditParameters
from deployments.workflows.chains import in_link, with_input
from serve.stage_calls import StagedEdit


class ChainedEdit:
    """`request`'s links, each made by a StagedEdit from `staged`; `retried` lists the stages whose call
    had to be made again, over all links."""

    def __init__(self, staged: Callable[[EditRequest], StagedEdit], request: EditRequest, links: tuple[EditParameters, ...]):
        self.staged, self.request, self.links = staged, request, links
        self.edits: list[StagedEdit] = []

    @property
    def retried(self) -> list[str]:
        return [stage for edit in self.edits for stage in edit.retried]

    async def images(self, seeds: tuple[int, ...]) -> list[list[EditedImage]]:
        """For each seed, every link's image (the last is the result), its timings those of all links.
        Link 1 is one StagedEdit for every seed (the prompt is encoded once); the later links of each
        image follow one another."""
        first = self.staged(self.request)
        self.edits.append(first)
        firsts = await first.images(seeds)
        tasks = [asyncio.ensure_future(self.rest(image, seed)) for image, seed in zip(firsts, seeds)]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # one image failed, the deadline came or the client left: stop the others' work
            for task in tasks:
                task.cancel()

    async def rest(self, first: EditedImage, seed: int) -> list[EditedImage]:
        """`first` (link 1's image of `seed`) and the images of the later links made from it."""
        offset = seed - self.links[0].seed  # image i of n: each link's seed + i
        made = [first]
        for k, link in enumerate(self.links[1:], start=1):
            request = EditRequest(
                with_input(link, made[-1].data), request_id=f"{self.request.request_id}-{k}", timings={"sent_at": time.time()},
                derived_from=made[-1].provenance, later_links=self.links[k + 1 :],  # checked again: link 1 may have been a cache hit
            )
            edit = self.staged(request)
            self.edits.append(edit)
            try:
                (image,) = await edit.images((link.seed + offset,))
            except EditError as error:
                raise in_link(error, k, len(self.links)) from None
            made.append(image)
        made[-1] = dataclasses.replace(made[-1], timings=_summed([image.timings for image in made]))
        return made


def _summed(timings: list[dict[str, float]]) -> dict[str, float]:
    """Each stage's seconds over all links."""
    total: dict[str, float] = {}
    for link in timings:
        for name, seconds in link.items():
            if name != "sent_at":
                total[name] = total.get(name, 0.0) + seconds
    return total
