"""memcollab.tracking"""
