"""The ``fedavg`` arm: the segmenter trained with Flower FedAvg across the sites.

``client.app`` (ClientApp) trains the received segmenter on its site's real slices;
``server.make_server_app`` (ServerApp) runs Flower's ``FedAvg`` and saves the final weights;
``run.train_fedavg`` runs both in Flower's simulation engine, one SuperNode per site.
"""
