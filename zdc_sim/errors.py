"""Project errors: everything a user can cause raises one of these, with a message that says
what was wrong and what was expected, so callers (CLI, service) can report it instead of crashing."""


class ZdcError(Exception):
    """Base class of every error a user of zdc-sim can cause."""


class ConfigError(ZdcError, ValueError):
    """An option, setting or map the user gave is invalid (model or regularizer options, branch maps)."""


class DataError(ZdcError, ValueError):
    """Arrays handed to a computation have the wrong shape or hold nothing it can use."""


class FeatureError(ZdcError, ValueError):
    """A particle feature array is malformed or unphysical."""


class RootFileError(ZdcError):
    """A ROOT file cannot be used: names the file, tree, branch, what was expected and found."""

    def __init__(self, problem, *, file, tree=None, branch=None, expected=None, found=None):
        self.problem, self.file, self.tree, self.branch = problem, str(file), tree, branch
        self.expected, self.found = expected, found
        parts = [f"{problem}: file '{self.file}'"]
        if tree is not None:
            parts.append(f"tree '{tree}'")
        if branch is not None:
            parts.append(f"branch '{branch}'")
        message = ", ".join(parts)
        if expected is not None:
            message += f"; expected {expected}"
        if found is not None:
            message += f"; found {found}"
        super().__init__(message)


class DomainError(FeatureError):
    """A particle lies outside the feature ranges the model was trained on (an extrapolation the
    caller did not ask for)."""
