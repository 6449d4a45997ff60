"""The database wing: DSNs, host choice, prefork's PyMySQL connection class, error numbers and the pool.

Apps import the pool from ``prefork.pool``; README's "Layout" section says what each module here owns.
"""
