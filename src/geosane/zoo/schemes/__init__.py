"""Source scheme resolvers, one module each; :mod:`geosane.zoo.sources` registers them.

Each resolver takes the text after ``scheme:`` (a path for ``file``) and the keyword arguments
``random_init``, ``in_chans`` and ``num_classes``, and returns a :class:`~geosane.arch.LoadedModel`
that :func:`geosane.zoo.resolve` then validates.
"""
