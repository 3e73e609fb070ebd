"""What the ingress and the stage deployments (serve/stages.py) agree on, apart from the stage classes:
the ingress replica imports this, not the models' libraries (diffusers, transformers), and starts in
less than half the time."""

# What a deployment gets where its config leaves an option unset (Ray's defaults otherwise): a bounded
# queue, so that overload is a fast 503 rather than an ever longer wait.
DEFAULT_OPTIONS = {"ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 8, "max_queued_requests": 64}

ACCEPTED = {"accepted": True}  # denoise_stream's first event: the request is in the Denoiser's loop
ADAPTER_SEPARATOR = "+"  # joins a request's adapter names into its multiplexed model id (names can't hold it)


def adapters_id(conditioning_adapters) -> str:
    """The multiplexed model id of a request's adapters ((name, scale) pairs): "" for none."""
    return ADAPTER_SEPARATOR.join(name for name, _ in conditioning_adapters)
