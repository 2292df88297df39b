"""procure.valuation"""
