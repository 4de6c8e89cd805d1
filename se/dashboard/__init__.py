"""The live dashboard at ``/.well-known/se/dashboard``: a self-contained page (``page.html``)
that polls ``/.well-known/se/dashboard.json`` (:mod:`se.dashboard.http`), fed by each
worker's :class:`se.dashboard.state.Dashboard`."""
