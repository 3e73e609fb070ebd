"""Model families. Each has a request declaration (`*_parameters.py`, torch-free: the HTTP edge and the
bulk job read it) and its math (`base.ModelFamily` subclasses, loaded per stage by `loading.py`)."""

from deployments.errors import ModelLoadError
from deployments.families.instruct_pix2pix_parameters import InstructPix2PixParameters
from deployments.families.qwen_image_edit_parameters import QwenImageEditParameters, QwenImageEditPlusParameters
from deployments.parameters import EditParameters

DECLARATIONS: dict[str, type[EditParameters]] = {
    declared.pipeline: declared
    for declared in (QwenImageEditParameters, QwenImageEditPlusParameters, InstructPix2PixParameters)
}


def foreign_field(name: str, declared: type[EditParameters]) -> str | None:
    """Why `declared`'s family refuses `name` when it is another family's field (None when it isn't)."""
    if name in declared.model_fields or not any(name in other.model_fields for other in DECLARATIONS.values()):
        return None
    return f"does not apply to {declared.family} models; they take {' and '.join(declared.family_fields()) or 'no such field'}"


def declaration(pipeline_class: str) -> type[EditParameters]:
    """The request declaration of the family serving `pipeline_class`."""
    if pipeline_class not in DECLARATIONS:
        raise ModelLoadError(f"{pipeline_class!r} pipelines are not supported; supported: {sorted(DECLARATIONS)}")
    return DECLARATIONS[pipeline_class]
