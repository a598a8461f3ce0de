"""``machines scan``: inventory an image's packages from its layers, match them against OSV records, report.

``source`` opens an image (a ``docker save`` archive, a root filesystem tar, a registry reference or an image on a
machine); the runtime's ``runtime.images.scan`` (shared, since machines scan images on arrival with it) reads the
package databases, orders versions as each ecosystem does and matches OSV records; ``osvdata`` downloads them;
``report`` writes tables, JSON, SARIF and SBOMs.
"""
