"""engines/torch"""
