"""The model families' request declarations by pipeline class, and which family a field belongs to.
Each family declares its fields in deployments/families/<family>/parameters.py (torch-free, like this);
its math is loaded per stage by deployments/families/loading.py."""

from deployments.errors import ModelLoadError
from deployments.families.instruct_pix2pix.parameters import InstructPix2PixParameters
from deployments.families.qwen_image_edit.parameters import QwenImageEditParameters, QwenImageEditPlusParameters
from deployments.request.fields import EditParameters

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
