"""memcollab.eval"""
