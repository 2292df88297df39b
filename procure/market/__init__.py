"""procure.market"""
