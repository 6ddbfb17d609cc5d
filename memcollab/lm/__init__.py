"""memcollab.lm"""
