"""memcollab.memory"""
