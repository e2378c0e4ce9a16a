"""The accuracy predictor: features, regression models, fitting on supernet scores, reports."""
