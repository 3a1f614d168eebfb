def h(:
    pass
