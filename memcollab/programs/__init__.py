"""memcollab.programs"""
