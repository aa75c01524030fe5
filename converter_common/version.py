from importlib import metadata


def package_version() -> str:
    try:
        return metadata.version("converter")
    except metadata.PackageNotFoundError:
        return "unknown"
