"""The one error hierarchy of qeff-compiler.

Every problem a user can cause (a wrong model, a bad option, a broken file) is raised as a subclass of
`QeffError`, at the place where it is detected and with the offending value in the message, so the CLI can print
one line and exit with a usage (2) or failure (1) code instead of a traceback. docs/errors.md catalogues them
(tests/test_errors.py triggers every row).
"""

from __future__ import annotations


class QeffError(Exception):
    """Root of every error qeff-compiler raises for a problem with its input."""

    #: exit code of the `qeffc` driver for this kind of error: 2 = the request was wrong, 1 = the work failed
    exit_code: int = 1


class ModelSourceError(QeffError):
    """The model argument cannot be read: wrong type, missing directory or files, unreadable config."""

    exit_code = 2


class NotAnMptModelError(ModelSourceError):
    """The model, directory or config is not an MPT model."""


class UnsupportedConfigError(QeffError):
    """An MPT config sets an option that HF's MptForCausalLM ignores or that the compiler cannot honour."""

    exit_code = 2


class WeightError(QeffError):
    """Checkpoint weights are missing, unexpected, of the wrong shape, or unreadable."""


class CaptureError(QeffError):
    """torch.export could not trace the model into a graph."""


class PipelineError(QeffError):
    """A pass pipeline was asked for wrongly."""

    exit_code = 2


class PipelineSyntaxError(PipelineError):
    """A pipeline string is malformed (braces, separators, empty names)."""


class UnknownPassError(PipelineError):
    """A pipeline names a pass that is not registered."""


class PassOptionError(PipelineError):
    """A pass option is unknown, repeated, or its value does not parse as the option's type."""


class PassOrderError(PipelineError):
    """A pass runs on a program that lacks a property it requires (placed too early) or has its result already
    (named twice)."""


class VerificationError(QeffError):
    """A pass produced an invalid graph or changed the program's numerics beyond its tolerance."""


class MetaWeightError(QeffError):
    """Numeric work was asked of a program whose weights are on the meta device (config-only capture)."""

    exit_code = 2


class ProgramInputError(QeffError):
    """A program was run with missing, unexpected, or wrongly shaped inputs."""

    exit_code = 2


class InvalidArgumentError(QeffError):
    """An argument is outside the range the product accepts (a shape, a length, a count)."""

    exit_code = 2


class ArtifactError(QeffError):
    """A result (artifact directory, calibration table, trace, plot) cannot be written, or an artifact cannot be
    read."""


class ArtifactExistsError(ArtifactError):
    """The output directory exists already and overwriting was not asked for."""

    exit_code = 2


class ArtifactVersionError(ArtifactError):
    """The artifact was written in a format version this qeff-compiler does not read."""


class ArtifactIntegrityError(ArtifactError):
    """A file of the artifact is missing, truncated or modified (checksum mismatch)."""


class HostMemoryError(QeffError):
    """Compiling in memory needs more memory than this machine has available (streaming would fit)."""

    exit_code = 2


class ArtifactSchemaError(ArtifactIntegrityError):
    """An artifact's manifest does not follow the schema of its format version (a key missing, of the wrong type
    or unknown; a file the format does not have); the message names the field."""


class ArtifactPathError(ArtifactIntegrityError):
    """A file an artifact lists is a symbolic link (it could point outside the artifact directory)."""


class ArtifactMismatchError(ArtifactIntegrityError):
    """An artifact's manifest contradicts its programs or weights (context length, batch, precision, model
    shape, I/O, tied weights); the message names the field."""


class Fp16OverflowError(QeffError):
    """A model's activations exceed fp16's range (|x| > 65504), so lowering it to fp16 would produce inf."""


class NonFiniteError(QeffError):
    """A run computed NaN or infinite logits from valid inputs: the model's weights overflow its precision."""


class PartitionError(QeffError):
    """The AI 100 partitioner met an op or a weight layout it cannot split (e.g. an unknown dequantize chain)."""


class ModelDoesNotFitError(QeffError):
    """A model's weights, KV cache and activations exceed a SoC's memory on the chosen device and SoC count."""

    exit_code = 2


class HandoffError(QeffError):
    """A compiled model cannot be handed off to Qualcomm's compiler as asked (a precision or pipeline the device's
    compiler flags cannot express), or that compiler failed."""

    exit_code = 2
