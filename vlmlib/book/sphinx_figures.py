"""A Sphinx extension of the book (_config.yml, `extra_extensions`): every figure is numbered, per page,
and every figure a notebook shows has alt text.

Sphinx numbers a figure ("Figure 3.", `numfig_format` in _config.yml) only when it has an id, and a
figure gets one from an explicit `:name:`, which must be unique across the whole book. A chapter's
figures are written once (its notebook's `{glue:figure}` directives) and published for each model
family, so the same name would appear on two pages. This gives every figure without a name an id of
its own page instead. And without numbered sections Sphinx counts figures across the whole book
("Figure 37" on a chapter's page); a reader of a page counts from its first figure: Figure 1, 2, ...

A figure a chapter places with `{glue:figure}` takes its caption and alt text from the directive. One
shown in a cell's output (drawn by a library function, or an exercise's solution) brings them in the
output's metadata (`vlmlib.paper.figures.show`, "vlmlib": {"alt": ..., "caption": ...}), which myst-nb
does not read: here the image myst-nb wrote, found by the name myst-nb gives it (the SHA-256 of the
image's bytes), gets the alt text, and, with a caption, is wrapped in a numbered figure.
"""

from __future__ import annotations


def number_every_figure(app, doctree) -> None:
    """Every figure gets an id (docutils' own, unique on its page), so that Sphinx numbers it."""
    from docutils import nodes

    for figure in doctree.findall(nodes.figure):
        if not figure["ids"]:
            doctree.set_id(figure)


def figures_from_output_metadata(app, doctree) -> None:
    """Alt text and captions from a notebook output's metadata for the images of a notebook page."""
    import base64
    import hashlib
    import json
    from pathlib import Path

    from docutils import nodes

    source = Path(app.env.doc2path(app.env.docname))
    if source.suffix != ".ipynb":
        return
    try:
        cells = json.loads(source.read_text()).get("cells", [])
    except (OSError, ValueError):
        return
    records = {}
    for cell in cells:
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get("vlmlib") or {}
            png = output.get("data", {}).get("image/png")
            if png and (record.get("alt") or record.get("caption")):
                records[hashlib.sha256(base64.b64decode("".join(png))).hexdigest()] = record
    for image in list(doctree.findall(nodes.image)):
        record = records.get(Path(image.get("uri", "")).stem)
        if record is None:
            continue
        if "alt" not in image and record.get("alt"):
            image["alt"] = record["alt"]
        bundle = image.parent
        while bundle is not None and bundle.get("nb_element") != "mime_bundle":
            bundle = bundle.parent
        if not record.get("caption") or bundle is None or isinstance(bundle.parent, nodes.figure):
            continue
        figure = nodes.figure()
        bundle.replace_self(figure)
        figure += bundle
        figure += nodes.caption(record["caption"], record["caption"])
        doctree.set_id(figure)


def number_per_page(app, env) -> list[str]:
    """Renumber each page's figures 1, 2, ... in the order Sphinx numbered them (runs after Sphinx's own
    numbering, on the same event)."""
    for numbers in env.toc_fignumbers.values():
        figures = numbers.get("figure")
        if figures:
            ordered = sorted(figures, key=lambda figure_id: figures[figure_id])
            numbers["figure"] = {figure_id: (k + 1,) for k, figure_id in enumerate(ordered)}
    return []


def setup(app):
    app.connect("doctree-read", number_every_figure, priority=400)
    app.connect("doctree-read", figures_from_output_metadata, priority=300)
    app.connect("env-get-updated", number_per_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
