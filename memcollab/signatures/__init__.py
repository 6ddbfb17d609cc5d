"""memcollab.signatures"""
