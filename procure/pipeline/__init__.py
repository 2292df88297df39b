"""procure.pipeline"""
